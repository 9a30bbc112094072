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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="narrow_support", help="a preset, optionally +FIELD=VALUE ...")
    parser.add_argument("--losses", default="dpo,ipo")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--extra-confirm-contexts", type=int, default=3840, help="the tier's default")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    parser.add_argument("--l2", default=",".join(f"{v:g}" for v in L2S), help="penalties the search contexts choose")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and leaves the other core to the machine
    name, *fields = args.preset.split("+")
    s = setting(name, extra_confirm_contexts=args.extra_confirm_contexts,
                **{k: _value(v) for k, v in (f.split("=", 1) for f in fields)})
    w, part = world(s), split_contexts(s, "confirm")
    seeds = [FRESH + i for i in range(args.seeds)]
    ref_fit = float((w.eval_ref[part].exp() * w.eval_reward[part]).sum(dim=1).mean())
    rows: dict[str, float] = {"reference policy (no training)": ref_fit}
    rows["unconstrained optimum"] = float(unconstrained(w.eval_ref[part], w.eval_reward[part], s.kl_coef).mean())
    l2s = tuple(float(v) for v in args.l2.split(","))
    oracle, l2 = fit_chosen(s, w.train_reward, l2s)
    rows[f"in-class, true reward, fitted on the training contexts (L2 {l2:g})"] = oracle
    rows["in-class, true reward, fitted on the confirming contexts themselves (no penalty)"] = split_fitness(
        s, fit_policy(w.eval_features[part], w.eval_ref[part], w.eval_reward[part], s.kl_coef, 0.0))
    pipe, choice = pairs_pipeline(s, seeds)
    pipeline = [float(v) for v in pipe.mean(axis=1)]
    pairs_label = f"from the pairs: Bradley-Terry fit, its in-class policy (pairs_ceiling, mean of {len(seeds)} seeds)"
    rows[pairs_label] = float(np.mean(pipeline))
    print(f"{s.name} (task_seed {s.task_seed}, support {s.support}, {s.pairs_per_context} pairs per context), "
          f"kl_coef {s.kl_coef}, {part.stop - part.start} confirming contexts, fresh seeds {seeds[0]}-{seeds[-1]}")
    for label, value in rows.items():
        print(f"  {value:.4f}  {label}")
    print(f"  (pairs pipeline: penalty {choice.penalty:g}, scale {choice.scale:.3g}"
          f"{' at the grid edge' if choice.at_edge else ''}, chosen on {TUNE} tuning seeds"
          + (f"; SD over seeds {np.std(pipeline, ddof=1):.4f})" if len(pipeline) > 1 else ")"))
    curves: dict[str, dict[str, float]] = {}
    for loss in (n for n in args.losses.split(",") if n):
        fn = load_loss(reference_candidate(loss, flip_rate(s)).code)
        curve = {f"{lr:g}": float(np.mean([fine_tune(fn, s, seed=seed, lr=lr).per_context[part.start:part.stop]
                                           for seed in seeds]))
                 for lr in (float(x) for x in args.lrs.split(","))}
        curves[loss] = curve
        best = max(curve, key=curve.get)
        print(f"  {loss:10s} " + " ".join(f"{lr}: {v:.4f}" for lr, v in curve.items())
              + f"; best with hindsight {curve[best]:.4f} at {best}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setting": s.name, "task_seed": s.task_seed, "ceilings": rows,
                                               "pipeline_per_seed": pipeline,
                                               "pipeline_choice": {"penalty": choice.penalty, "scale": choice.scale},
                                               "losses": curves}, indent=1))


if __name__ == "__main__":
    main()
