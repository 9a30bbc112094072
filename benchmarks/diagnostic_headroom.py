"""How far is the best reference from what the fast tier allows? Ceilings of the KL-priced fitness on a preset.

Why: a search that cannot beat the strongest reference (IPO on ``narrow_support``) may be weak, or the reference
may already sit near what any loss can reach on that world. The bandit's scores are exact, so the ceilings can be
computed instead of guessed, all on the confirming contexts (those a confirmation scores), fitness = reward -
kl_coef * KL(pi || pi_ref):

1. ``unconstrained``: per context, the KL-regularised optimum ``kl_coef * log E_ref[exp(r / kl_coef)]`` (any
   policy, the true reward of every action): no policy of any kind does better;
2. ``in-class, true reward``: the policy class the losses train (``log_softmax(ref + f(x) @ W)``) with ``W`` fitted
   to the true reward of every action on the training contexts (an oracle that needs no preferences), then scored
   on the confirming contexts; and the same fitted on the confirming contexts themselves (the class's own
   ceiling there). The KL of a near-deterministic policy is finite, so the unpenalised fit drives ``W`` to
   infinity and overfits the training contexts: it is L2-penalised, the penalty chosen (``--l2``) on the search
   contexts, as a run chooses a loss's rate there;
3. ``from the pairs`` (per fresh seed, the seeds a confirmation uses): ``fitness.pairs_ceiling``, a Bradley-Terry
   model linear in the features fitted to that seed's pairs, made its exact in-class policy ``W = c * M / beta``,
   the penalty and ``c`` chosen on the tuning seeds' search contexts as a run chooses a loss's rate: one thing a
   loss could reach from the same pairs (it never reads the label temperature or the true reward). The fit lives
   in one place so that this figure and ``headroom_scan.py``'s are the same pipeline (an earlier copy here scaled
   the reward model by the label temperature and penalised ``W``, and under-estimated what the pairs carry).

Then every reference in ``--losses`` at each rate of ``--lrs`` on the same fresh seeds (in process, trusted
references only, as ``preset_gaps.py`` runs them), with its best rate chosen with hindsight.

A composite (``--preset narrow_support+clean+pairs_per_context=128``, as ``task.preset=narrow_support+clean``) gets
each world's figures and their mean: a reference at one rate on every world, as a run trains it; the pipeline and the
true-reward fit choose their penalty and scale per world (each world's policy is its own in a composite too).

    python benchmarks/diagnostic_headroom.py --preset narrow_support --losses dpo,ipo --seeds 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from discopop.contract.losses import load_loss
from discopop.fitness import pairs_ceiling
from discopop.fitness.diagnostic_tune import fine_tune, tuning_seeds
from discopop.fitness.pairs_ceiling import PipelineChoice
from discopop.proposers.reference import reference_candidate
from discopop.tasks.diagnostic import DTYPE, DiagnosticSetting, exact_scores, flip_rate, setting, split_contexts, world

FRESH = 1000  # the first fresh seed, as a confirmation's
LRS = (0.01, 0.02, 0.03, 0.06, 0.1)
L2S = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
TUNE = 3  # the tier's training.tune_seeds


def _value(text: str) -> float | int:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def unconstrained(ref: torch.Tensor, reward: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per context, max over all policies of E[r] - kl_coef * KL: kl_coef * logsumexp(log pi_ref + r / kl_coef)."""
    return kl_coef * torch.logsumexp(ref + reward / kl_coef, dim=1)


def fit_policy(features: torch.Tensor, ref: torch.Tensor, reward: torch.Tensor, kl_coef: float,
               l2: float) -> torch.Tensor:
    """The ``W`` of the losses' policy class that maximises the mean of E[r] - kl_coef * KL over these contexts,
    less ``l2 * |W|^2`` (L-BFGS from the reference)."""
    weights = torch.zeros(features.shape[1], ref.shape[1], dtype=DTYPE, requires_grad=True)
    opt = torch.optim.LBFGS([weights], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        r, kl = exact_scores(features, ref, reward, weights)
        loss = -(r - kl_coef * kl).mean() + l2 * (weights ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weights.detach()


def pairs_pipeline(s: DiagnosticSetting, seeds: list[int], tune: int = TUNE) -> tuple[np.ndarray, PipelineChoice]:
    """Seeds x confirming contexts of ``fitness.pairs_ceiling``'s pipeline, its ``(penalty, scale)`` chosen on
    ``tune`` tuning seeds (2000, ...: those a run chooses a loss's rate on), and that choice."""
    choice = pairs_ceiling.choose(s, tuning_seeds(0, tune))
    return pairs_ceiling.confirm_scores(s, choice, seeds), choice


def split_fitness(s, weights: torch.Tensor, split: str = "confirm") -> float:
    """Mean exact fitness of the policy ``W`` on the held-out contexts of ``split``."""
    w, part = world(s), split_contexts(s, split)
    r, kl = exact_scores(w.eval_features[part], w.eval_ref[part], w.eval_reward[part], weights)
    return float((r - s.kl_coef * kl).mean())


def fit_chosen(s, reward: torch.Tensor, l2s: tuple[float, ...]) -> tuple[float, float]:
    """(confirming-context fitness, penalty) of the in-class policy fitted to ``reward`` on the training contexts,
    its L2 penalty the one of ``l2s`` that scores best on the search contexts."""
    w = world(s)
    fits = {l2: fit_policy(w.train_features, w.train_ref, reward, s.kl_coef, l2) for l2 in l2s}
    best = max(fits, key=lambda l2: split_fitness(s, fits[l2], "search"))
    return split_fitness(s, fits[best]), best


def parse_preset(text: str, extra_confirm_contexts: int) -> list[DiagnosticSetting]:
    """The worlds of ``--preset``: the parts of ``a+b+FIELD=VALUE`` without ``=`` are worlds (several: a composite,
    as ``task.preset=a+b``), those with one are fields set on every world."""
    parts = text.split("+")
    fields = dict(f.split("=", 1) for f in parts if "=" in f)
    return [setting(name, extra_confirm_contexts=extra_confirm_contexts, **{k: _value(v) for k, v in fields.items()})
            for name in parts if "=" not in name]


def ceilings(s: DiagnosticSetting, seeds: list[int],
             l2s: tuple[float, ...]) -> tuple[dict[str, float], list[float], PipelineChoice, float]:
    """One world's rows (labels without the choices, so a composite averages them), its pipeline per fresh seed,
    the pipeline's choice on the tuning seeds and the true-reward fit's L2 chosen on the search contexts."""
    w, part = world(s), split_contexts(s, "confirm")
    rows = {"reference policy (no training)": float((w.eval_ref[part].exp() * w.eval_reward[part]).sum(dim=1).mean()),
            "unconstrained optimum": float(unconstrained(w.eval_ref[part], w.eval_reward[part], s.kl_coef).mean())}
    oracle, l2 = fit_chosen(s, w.train_reward, l2s)
    rows["in-class, true reward, fitted on the training contexts (L2 chosen on the search contexts)"] = oracle
    rows["in-class, true reward, fitted on the confirming contexts themselves (no penalty)"] = split_fitness(
        s, fit_policy(w.eval_features[part], w.eval_ref[part], w.eval_reward[part], s.kl_coef, 0.0))
    pipe, choice = pairs_pipeline(s, seeds)
    pipeline = [float(v) for v in pipe.mean(axis=1)]
    rows[f"from the pairs: Bradley-Terry fit, its in-class policy (pairs_ceiling, mean of {len(seeds)} seeds)"] = float(
        np.mean(pipeline))
    return rows, pipeline, choice, l2


def curves_of(s: DiagnosticSetting, losses: list[str], lrs: list[float], seeds: list[int]) -> dict[str, dict[str,
                                                                                                          float]]:
    """Per reference, its mean confirming-context fitness over ``seeds`` at each rate (in process)."""
    part = split_contexts(s, "confirm")
    out = {}
    for loss in losses:
        fn = load_loss(reference_candidate(loss, flip_rate(s)).code)
        out[loss] = {f"{lr:g}": float(np.mean([fine_tune(fn, s, seed=seed, lr=lr).per_context[part.start:part.stop]
                                                for seed in seeds])) for lr in lrs}
    return out


def averaged(per_world: list[dict[str, float]]) -> dict[str, float]:
    """A composite's figure: the mean over its worlds (each world scores as many confirming contexts)."""
    return {key: float(np.mean([d[key] for d in per_world])) for key in per_world[0]}


def show(title: str, rows: dict[str, float], curves: dict[str, dict[str, float]]) -> None:
    print(title)
    for label, value in rows.items():
        print(f"  {value:.4f}  {label}")
    for loss, curve in curves.items():
        best = max(curve, key=curve.get)
        print(f"  {loss:10s} " + " ".join(f"{lr}: {v:.4f}" for lr, v in curve.items())
              + f"; best with hindsight {curve[best]:.4f} at {best}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="narrow_support",
                        help="a preset, optionally +FIELD=VALUE ...; several presets joined by + are a composite "
                             "(task.preset=a+b): each figure is the mean over its worlds, a loss at one rate on all")
    parser.add_argument("--losses", default="dpo,ipo")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--extra-confirm-contexts", type=int, default=3840, help="the tier's default")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    parser.add_argument("--l2", default=",".join(f"{v:g}" for v in L2S), help="penalties the search contexts choose")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and leaves the other core to the machine
    worlds = parse_preset(args.preset, args.extra_confirm_contexts)
    seeds = [FRESH + i for i in range(args.seeds)]
    l2s = tuple(float(v) for v in args.l2.split(","))
    losses = [n for n in args.losses.split(",") if n]
    lrs = [float(x) for x in args.lrs.split(",")]
    out: dict[str, dict] = {}
    for s in worlds:
        part = split_contexts(s, "confirm")
        rows, pipeline, choice, l2 = ceilings(s, seeds, l2s)
        said = (f"true-reward fit L2 {l2:g}; pairs pipeline: penalty {choice.penalty:g}, scale {choice.scale:.3g}"
                f"{' at the grid edge' if choice.at_edge else ''}, chosen on {TUNE} tuning seeds"
                + (f"; SD over seeds {np.std(pipeline, ddof=1):.4f}" if len(pipeline) > 1 else ""))
        curves = curves_of(s, losses, lrs, seeds)
        show(f"{s.name} (task_seed {s.task_seed}, support {s.support}, {s.pairs_per_context} pairs per context), "
             f"kl_coef {s.kl_coef}, {part.stop - part.start} confirming contexts, fresh seeds {seeds[0]}-{seeds[-1]}"
             f"\n  ({said})", rows, curves)
        out[s.name] = {"setting": s.name, "task_seed": s.task_seed, "ceilings": rows, "pipeline_per_seed": pipeline,
                       "pipeline_choice": {"penalty": choice.penalty, "scale": choice.scale}, "l2": l2,
                       "losses": curves}
    if len(worlds) > 1:
        per = list(out.values())
        rows = averaged([w["ceilings"] for w in per])
        curves = {loss: averaged([w["losses"][loss] for w in per]) for loss in losses}
        show(f"composite {'+'.join(out)}: the mean over its {len(worlds)} worlds (a loss at one rate on every world)",
             rows, curves)
        out["composite"] = {"ceilings": rows, "losses": curves,
                            "pipeline_per_seed": [float(v) for v in np.mean([w["pipeline_per_seed"] for w in per],
                                                                           axis=0)]}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out if len(worlds) > 1 else next(iter(out.values())), indent=1))


if __name__ == "__main__":
    main()
