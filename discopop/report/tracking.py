"""Experiment tracking with wandb, offline by default (no network, no account needed).

Offline runs are written under RUN_DIR/wandb and can be uploaded later with ``wandb sync``.
``wandb.mode=disabled`` skips wandb entirely (tests use it to stay fast).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from discopop.config import WANDB_MODES, WandbSettings, typed


class Tracker:
    def __init__(self, settings: WandbSettings | Mapping[str, Any], run_dir: Path, config: dict[str, Any]):
        """``settings``: the run's ``wandb`` group; ``config``: the whole run config (plain), logged with the run."""
        if isinstance(settings, Mapping):
            settings = typed(WandbSettings, settings, where="wandb")
        mode = settings.mode
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
        self.run = None
        if mode == "disabled":
            return
        import wandb  # lazy: wandb is optional

        self.run = wandb.init(project=settings.project, mode=mode, dir=str(run_dir),
                              config=config, name=run_dir.name, resume="allow", id=f"discopop-{run_dir.name}",
                              settings=wandb.Settings(silent=True, console="off"))

    def log_candidate(self, row_id: int, name: str, generation: int, status: str, fitness: float | None,
                      metrics: dict[str, Any], best: float | None) -> None:
        if self.run is None:
            return
        data: dict[str, Any] = {"candidate/id": row_id, "candidate/generation": generation,
                                "candidate/status": status, "best_fitness": best}
        if fitness is not None:
            data.update({"candidate/fitness": fitness, "candidate/reward": metrics.get("reward"),
                         "candidate/kl": metrics.get("kl")})
        self.run.log(data)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
