"""Entry point of a sandboxed worker process (``python -m discopop.worker``); never imported by the loop.

A worker imports torch/transformers/TRL, loads the task and builds its ``FineTuner`` once (the
expensive part), installs the runtime guard, and then serves requests until told to exit:

* ``{"op": "init", "task": {...}, "training": {...}, "kl_coef": x}`` -> ``{"ok": true, "seconds": s}``
* ``{"op": "check", "code": src}`` -> ``{"ok": true, "checks": {...}}`` or ``{"ok": false, "stage", "error"}``
* ``{"op": "train", "code": src, "seed": n}`` -> ``{"ok": true, "score": {...}, ...}`` or a failure

Candidate code is loaded here, after the static check, with restricted builtins.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


class Worker:
    def __init__(self) -> None:
        self.fine_tuner = None
        self.threads = 1
        self._loaded: tuple[str, Any] | None = None

    def init(self, msg: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        import torch

        self.threads = int(msg.get("threads", 1))
        torch.set_num_threads(self.threads)
        if msg.get("task") is not None:
            from discopop.tasks import load_task
            from discopop.training import FineTuner

            task = load_task(msg["task"])
            self.fine_tuner = FineTuner(task, msg["training"], Path(os.environ["DISCOPOP_SANDBOX_DIR"]),
                                        kl_coef=float(msg.get("kl_coef", 0.0)))
        from discopop import checks  # noqa: F401 - imported before the guard closes the door
        from discopop.sandbox import install_guard

        install_guard(os.environ["DISCOPOP_SANDBOX_DIR"])
        return {"ok": True, "seconds": time.perf_counter() - started}

    def _load(self, code: str):
        from discopop.losses import LossRejected, load_loss

        if self._loaded and self._loaded[0] == code:
            return self._loaded[1]
        try:
            fn = load_loss(code)
        except LossRejected as err:
            raise _Failure("static", str(err)) from None
        except BaseException as err:  # noqa: BLE001 - module top level of untrusted code
            raise _Failure("load", f"error while loading the module: {_one_line(err)}") from None
        self._loaded = (code, fn)
        return fn

    def check(self, msg: dict[str, Any]) -> dict[str, Any]:
        from discopop.checks import CheckFailed, check_loss

        fn = self._load(msg["code"])
        try:
            report = check_loss(fn, seed=int(msg.get("seed", 0)))
        except CheckFailed as err:
            raise _Failure("numeric", str(err)) from None
        except BaseException as err:  # noqa: BLE001
            raise _Failure("numeric", f"raised {_one_line(err)}") from None
        return {"ok": True, "checks": {"uses_beta": report.uses_beta, "probe": report.probe, "curve": report.curve}}

    def train(self, msg: dict[str, Any]) -> dict[str, Any]:
        from discopop.trl import NonFiniteLoss

        if self.fine_tuner is None:
            raise _Failure("train", "worker was started without a task")
        fn = self._load(msg["code"])
        try:
            result = self.fine_tuner.run(fn, seed=int(msg["seed"]), split=msg.get("split", "search"))
        except NonFiniteLoss as err:
            raise _Failure("train", str(err)) from None
        except BaseException as err:  # noqa: BLE001
            raise _Failure("train", _one_line(err)) from None
        score = result.score
        if not all(map(_finite, (score.fitness, score.reward, score.kl))):
            raise _Failure("score", f"non-finite score (reward={score.reward}, kl={score.kl})")
        return {
            "ok": True, "fitness": score.fitness, "reward": score.reward, "kl": score.kl, "steps": result.steps,
            "final_loss": result.final_loss, "train_seconds": result.train_seconds,
            "step_seconds": result.step_seconds, "score_seconds": score.seconds, "train_metrics": result.metrics,
        }

    def reset_globals(self) -> None:
        """Undo global torch state a candidate might have changed (defence in depth)."""
        import torch

        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)
        torch.set_num_threads(self.threads)


class _Failure(Exception):
    def __init__(self, stage: str, error: str):
        self.stage = stage
        self.error = error


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def main() -> None:
    from discopop.sandbox import child_connections

    recv, send = child_connections()
    worker = Worker()
    handlers = {"init": worker.init, "check": worker.check, "train": worker.train}
    while True:
        try:
            msg = json.loads(recv.recv_bytes())
        except EOFError:
            return
        if msg.get("op") == "exit":
            return
        started = time.perf_counter()
        try:
            reply = handlers[msg["op"]](msg)
        except _Failure as fail:
            reply = {"ok": False, "stage": fail.stage, "error": fail.error}
        except BaseException as err:  # noqa: BLE001 - report, never die silently
            reply = {"ok": False, "stage": msg.get("op", "?"), "error": _one_line(err),
                     "traceback": traceback.format_exc(limit=3)[-1500:]}
        finally:
            try:
                worker.reset_globals()
            except BaseException:  # noqa: BLE001
                pass
        reply["seconds"] = time.perf_counter() - started
        send.send_bytes(json.dumps(reply).encode())


if __name__ == "__main__":
    main()
