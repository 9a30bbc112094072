"""``cascade``: the cheap stages a candidate passes before the full fine-tune protocol (``search/fidelity.py``).

A stage only *filters* (rejects a candidate below its cut) where its rank agreement with the full protocol has
been measured on this run's task and training settings (``benchmarks/stage_agreement.py`` writes the file named
by ``agreement``) and the lower confidence bound of Spearman's rho reaches ``min_rho_lower``. Otherwise it only
*orders* the work (best cheap score first). With no stages (the default) the cascade is as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from discopop.config.base import is_number, require, setting
from discopop.config.task import DIAGNOSTIC_KL_COEF, DIAGNOSTIC_PRESETS

STAGES = ("diagnostic", "short")
# A rejected candidate may cost at most this share of one full fine-tune's steps (issue 25: <= 25%).
MAX_REJECTED_SHARE = 0.25


@dataclass
class CascadeSettings:
    """Cheap stages before the full protocol; each filters only where its agreement is shown."""

    stages: list[str] = setting([], "Cheap stages, in order: diagnostic (fine-tunes on the diagnostic bandit "
                                    "presets, ~0.1-0.3 s each, no task steps) and/or short (a fine-tune of "
                                    "short_fraction of the steps on the run's task at the screen rate). "
                                    "[]: none (every candidate gets the full protocol, as before).")
    diagnostic_presets: list[str] = setting(["clean", "label_noise"], "Diagnostic presets the diagnostic stage "
                                                                      "scores on (its score: their mean).")
    diagnostic_lrs: list[float] = setting([0.01, 0.03, 0.1], "Adam rates of the diagnostic fine-tunes; a preset's "
                                                             "score is the best of them (each loss at its own rate, "
                                                             "as in the full protocol).")
    diagnostic_kl_coef: float = setting(DIAGNOSTIC_KL_COEF, "kl_coef of the diagnostic presets' fitness (reward - "
                                                            "kl_coef * KL): the tier's own price, as task=diagnostic "
                                                            "ranks (0: reward only, the stage's former default).")
    short_fraction: float = setting(0.25, "The short stage trains this share of a full fine-tune's steps (at most "
                                          "0.25: a candidate it rejects costs <= 25% of one full fine-tune).")
    agreement: str | None = setting(None, "JSON file of measured rank agreements (benchmarks/stage_agreement.py "
                                          "--out). null: no agreement shown, so every stage only orders.")
    min_rho_lower: float = setting(0.5, "A stage filters only if the stored lower confidence bound of its Spearman "
                                        "rho with the full protocol, measured for these settings, is >= this.")
    cut_quantile: float = setting(0.25, "A filtering stage rejects a candidate whose cheap score is below this "
                                        "quantile of the cheap scores of the run's earlier rows (references "
                                        "included; references are never rejected).")
    min_history: int = setting(5, "A filtering stage rejects nothing until this many rows have its score.")

    def check(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        require(not unknown, f"cascade.stages: unknown stage(s) {', '.join(map(str, unknown))} "
                             f"(allowed: {', '.join(STAGES)})")
        require(len(set(self.stages)) == len(self.stages), f"cascade.stages lists a stage twice: {self.stages}")
        bad = [p for p in self.diagnostic_presets if p not in DIAGNOSTIC_PRESETS]
        require(self.diagnostic_presets and not bad,
                f"cascade.diagnostic_presets must be a non-empty list of {', '.join(DIAGNOSTIC_PRESETS)}, "
                f"got {self.diagnostic_presets}")
        require(self.diagnostic_lrs and all(is_number(v) and v > 0 for v in self.diagnostic_lrs),
                f"cascade.diagnostic_lrs must be a non-empty list of rates > 0, got {self.diagnostic_lrs}")
        require(is_number(self.diagnostic_kl_coef) and self.diagnostic_kl_coef >= 0,
                f"cascade.diagnostic_kl_coef must be >= 0, got {self.diagnostic_kl_coef}")
        require(0 < self.short_fraction <= MAX_REJECTED_SHARE,
                f"cascade.short_fraction must be in (0, {MAX_REJECTED_SHARE}], got {self.short_fraction}")
        require(-1 <= self.min_rho_lower <= 1, f"cascade.min_rho_lower must be in [-1, 1], got {self.min_rho_lower}")
        require(0 < self.cut_quantile < 1, f"cascade.cut_quantile must be in (0, 1), got {self.cut_quantile}")
        require(self.min_history >= 2, f"cascade.min_history must be >= 2, got {self.min_history}")
