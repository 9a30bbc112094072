"""Per-candidate cost of the inner loop on a GPT-2-small-sized or a 0.5B model, full fine-tune against LoRA, at 1
and 2 workers per GPU, side by side in one invocation.

Everything is built locally: a GPT-2 model from a config with random weights (``--size small``: 12 layers, 768
wide, GPT-2's vocabulary of 50,257, ~124M parameters; ``--size tiny`` for a CPU check) and a tiny reward model,
or (``--size 0.5b``) a Qwen2 decoder of Qwen2.5-0.5B's shape (494M parameters) and a reward model of the same
shape (``--size 0.5b-tiny``: the same architecture for a CPU check), a character tokenizer padded to the
vocabulary, and 2,000 synthetic preference pairs, saved as a ``task=hub`` task: ``task.model`` loads them as it
loads real weights from a local directory or the hub. Each configuration starts its own executor
(``make_executor``, the sandboxed workers ``discover`` uses, each fed a fresh loss oracle per job) and runs N
reference losses through the evaluation cascade (``Evaluator``: numeric checks, one fine-tune at one learning
rate, held-out scoring, archive writes), in batches as wide as the executor, as the loop does.

Printed per configuration: the per-candidate split of wall time (optimiser steps / scoring / overhead =
everything else: checks, trainer reset, IPC, oracle hand-over, archive), overhead as a share of compute, peak
GPU memory per worker (CUDA only), each worker process's peak resident memory (host side; the only memory figure
on a CPU), worker start-up, candidates per hour, and ratios to the full fine-tune at 1 worker per GPU. On a
CPU-only machine "per GPU" means "workers" (1 or 2), and the figures say nothing about GPUs.

    python benchmarks/gpu_candidate.py --quick              # one H100: ~5 minutes
    python benchmarks/gpu_candidate.py --n 16               # the full comparison
    nice -n 10 python benchmarks/gpu_candidate.py --size tiny --n 4   # CPU
    python benchmarks/gpu_candidate.py --size 0.5b --quick [--gradient-checkpointing]   # one GPU, not measured yet
    python benchmarks/gpu_candidate.py --size 0.5b --probe --batch-size 4   # no workers: one LoRA step, fp32 / bf16
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SIZES = {
    # GPT-2 small is n_embd 768, 12 layers, 12 heads, vocabulary 50,257 (~124M parameters)
    "small": {"arch": "gpt2", "hidden": 768, "layers": 12, "heads": 12, "vocab": 50257, "prompt": 96, "completion": 32},
    "tiny": {"arch": "gpt2", "hidden": 64, "layers": 2, "heads": 2, "vocab": 512, "prompt": 24, "completion": 8},
    # Qwen2.5-0.5B's shape (its config.json): 896 wide, 24 layers, 14 query and 2 key-value heads, MLP 4,864,
    # vocabulary 151,936, tied embeddings: 494M parameters. Its reward model has the same shape (a 0.5B reward model,
    # as one fine-tuned from the same base would be). A worker loads both on the host first (2 GB each in fp32), so its
    # host-memory cap is raised from the default 6,144 MB (16,384 MB: a guess, not measured on a GPU yet).
    "0.5b": {"arch": "qwen2", "hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864,
             "vocab": 151936, "prompt": 96, "completion": 32, "worker_mb": 16384},
    # the same architecture (Qwen2: grouped-query attention, SwiGLU MLP, RMSNorm, tied embeddings) at a CPU test size
    "0.5b-tiny": {"arch": "qwen2", "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
                  "vocab": 512, "prompt": 24, "completion": 8},
}
ALPHABET = string.ascii_lowercase + " .,!?"
LORA = "{r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}"


def build_tokenizer(vocab: int):
    """Character-level fast tokenizer whose vocabulary is padded with never-produced tokens up to ``vocab``,
    so the model's output layer has the real size and any generated id decodes."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    table = {"<pad>": 0, "<eos>": 1, **{ch: i + 2 for i, ch in enumerate(ALPHABET)}}
    table.update({f"<t{i}>": i for i in range(len(table), vocab)})
    core = Tokenizer(WordLevel(table, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("<eos>|<pad>|."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")


def model_config(size: dict, reward: bool, length: int, ids: dict):
    """The transformers config of the policy (``reward=False``) or reward model of ``size``: a Qwen2 reward model
    has the policy's shape; a GPT-2 one is 64 wide and 2 layers deep (as before)."""
    from transformers import GPT2Config, Qwen2Config

    labels = {"num_labels": 1} if reward else {}
    if size["arch"] == "qwen2":
        return Qwen2Config(vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                           num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"],
                           intermediate_size=size["intermediate"], max_position_embeddings=max(4096, length),
                           tie_word_embeddings=True, **labels, **ids)
    wide, deep, heads = (64, 2, 2) if reward else (size["hidden"], size["layers"], size["heads"])
    return GPT2Config(vocab_size=size["vocab"], n_positions=max(1024, length), n_embd=wide, n_layer=deep,
                      n_head=heads, **labels, **ids)


def random_model(size: dict, reward: bool = False, length: int = 0, ids: dict | None = None):
    """A causal LM (or sequence-classification reward model) of ``size`` with random weights, from its config."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = model_config(size, reward, length, ids or {})
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    return cls.from_config(config)


def n_parameters(size: dict) -> int:
    """The policy's parameter count, from a model built on the meta device (no memory, no time)."""
    import torch

    with torch.device("meta"):
        model = random_model(size)
    return sum(p.numel() for p in model.parameters())  # tied embeddings are one parameter, counted once


def build_hub(root: Path, size: dict, pairs: int, heldout: int, seed: int) -> None:
    """Policy and reward model (random weights), and preference pairs, saved where ``task=hub`` reads them: the
    policy loads as any local or hub model does (``AutoModelForCausalLM.from_pretrained``), so a directory of real
    weights, or a hub id, takes its place unchanged."""
    import torch
    from datasets import Dataset

    tok = build_tokenizer(size["vocab"])
    length = size["prompt"] + 2 * size["completion"] + 8
    ids = dict(eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    policy = random_model(size, length=length, ids=ids)
    policy.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    n_params = sum(p.numel() for p in policy.parameters())
    del policy
    reward = random_model(size, reward=True, length=length, ids=ids)
    reward.save_pretrained(root / "reward")
    tok.save_pretrained(root / "reward")
    del reward
    rng = random.Random(seed)

    def text(n: int) -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(n))

    rows = [{"prompt": text(size["prompt"]), "chosen": text(size["completion"]), "rejected": text(size["completion"])}
            for _ in range(pairs + heldout)]
    Dataset.from_list(rows).save_to_disk(str(root / "prefs"))
    print(f"model: {size['arch']} {size['layers']} layers x {size['hidden']}, vocabulary {size['vocab']}: "
          f"{n_params / 1e6:.1f}M parameters; {pairs} pairs of {size['prompt']}+{size['completion']} characters")


def hub_overrides(root: Path, size: dict, heldout: int) -> list[str]:
    """The ``task=hub`` overrides that point at what ``build_hub`` saved under ``root``."""
    return ["task=hub", f"task.model={root / 'policy'}", f"task.dataset={root / 'prefs'}",
            f"task.reward_model={root / 'reward'}", f"task.heldout_prompts={heldout}",
            f"task.max_new_tokens={size['completion']}", f"task.cache_dir={root / 'cache'}",
            *([f"executor.memory_mb={size['worker_mb']}"] if "worker_mb" in size else [])]


def worker_peak_rss_mb(executor) -> list[float]:
    """Each local worker process's peak resident memory so far (``VmHWM``; Linux), the host-side peak the GPU figure
    does not show and the only one on a CPU. Empty where the executor has no local worker processes (Ray)."""
    peaks = []
    for worker in getattr(executor, "workers", []):
        proc = getattr(getattr(worker, "proc", None), "proc", None)
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text() if proc is not None else ""
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return peaks


@dataclass
class Measured:
    name: str
    workers: int
    warm_up: float = 0.0
    wall: float = 0.0
    steps: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    check: list[float] = field(default_factory=list)  # the numeric-checks job (worker round trip)
    train_job: list[float] = field(default_factory=list)  # the training jobs' worker round trips
    peak_gpu_mb: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)  # each worker's peak resident memory after each batch
    device: str = "?"
    missing_layers: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def per_hour(self) -> float:
        return 3600 * len(self.total) / self.wall if self.wall else 0.0


class PeakRecorder:
    """Passes every call to the real executor; keeps each train job's ``peak_gpu_mb`` (the archive does not)."""

    def __init__(self, executor, measured: Measured):
        self.executor, self.measured = executor, measured

    def run(self, jobs):
        for result in self.executor.run(jobs):
            if result.ok and result.job.stage == "train" and result.trained.peak_gpu_mb is not None:
                self.measured.peak_gpu_mb.append(float(result.trained.peak_gpu_mb))
            yield result

    def warm_up(self) -> None:
        self.executor.warm_up()

    @property
    def parallelism(self) -> int:
        return self.executor.parallelism

    def close(self) -> None:
        self.executor.close()


def measure(name: str, overrides: list[str], n: int) -> Measured:
    from discopop.archive import Archive
    from discopop.config.compose import compose_settings
    from discopop.execution.factory import make_executor
    from discopop.fitness.tuning import LrProtocol
    from discopop.proposers.reference import available, reference_candidate
    from discopop.search.cascade import Evaluator
    from discopop.search.loop import worker_spec
    from discopop.tasks import load_task

    cfg, _ = compose_settings(overrides)
    load_task(cfg.task)
    measured = Measured(name, int(cfg.executor.workers))
    executor = make_executor(cfg.executor, worker_spec(cfg))
    recorder = PeakRecorder(executor, measured)
    try:
        started = time.perf_counter()
        recorder.warm_up()
        measured.warm_up = time.perf_counter() - started
        report = getattr(executor, "sandbox_report", lambda: [])()
        if report:
            measured.device = f"{report[0].get('device')} ({report[0].get('precision')})"
            measured.missing_layers = report[0].get("missing_layers") or {}
        archive = Archive(Path(tempfile.mkdtemp()) / "archive.sqlite")
        evaluator = Evaluator(archive, recorder, seed=0, protocol=LrProtocol.from_config(cfg.training))
        names = [x for x in available() if x != "negated_dpo"]
        width = recorder.parallelism
        for start in range(0, n, width):
            archive.discard_rows()  # only behaviour duplicates within a batch remain
            rows = []
            for i in range(start, min(n, start + width)):
                cand = reference_candidate(names[i % len(names)])
                cand.name, cand.code = f"{cand.name}_{i}", cand.code + f"\n_RUN = {i}\n"  # distinct code hash
                rows.append(archive.get(archive.add(cand, 1)))
            started = time.perf_counter()
            outcomes = list(evaluator.evaluate(rows))
            measured.wall += time.perf_counter() - started
            measured.peak_rss_mb.extend(worker_peak_rss_mb(executor))
            for outcome in outcomes:
                secs = outcome.metrics.get("seconds", {})
                if outcome.status != "scored":
                    measured.failed.append(f"{outcome.status}: {outcome.error}")
                    continue
                measured.steps.append(secs.get("steps", 0.0))
                measured.score.append(secs.get("score", 0.0))
                measured.total.append(secs.get("total", 0.0))
                measured.check.append(secs.get("check", 0.0))
                measured.train_job.append(secs.get("train", 0.0))
    finally:
        recorder.close()
    return measured


def summary(m: Measured, base: Measured | None) -> str:
    if not m.total:
        return f"{m.name:<22} every candidate failed: {m.failed[:1]}"
    steps, score, total = (statistics.fmean(v) for v in (m.steps, m.score, m.total))
    overhead = total - steps - score
    peak = f"{max(m.peak_gpu_mb):8.0f}" if m.peak_gpu_mb else f"{'-':>8}"
    rss = f"{max(m.peak_rss_mb):8.0f}" if m.peak_rss_mb else f"{'-':>8}"
    ratio = f"{m.per_hour / base.per_hour:5.2f}x" if base and base.per_hour else "  -  "
    return (f"{m.name:<22} {m.workers:>2} {steps:8.2f} {score:8.2f} {overhead:9.2f} {overhead / (steps + score):8.1%} "
            f"{total:8.2f} {peak} {rss} {m.warm_up:8.1f} {m.per_hour:9.0f} {ratio}")


def overhead_split(m: Measured) -> str:
    """Where a configuration's overhead goes: the checks job, the training job outside its optimiser steps and
    scoring (trainer reset, oracle hand-over, state audit), and the parent (queueing, IPC, archive)."""
    if not m.total:
        return f"{m.name:<22} -"
    check, job, steps, score, total = (statistics.fmean(v) for v in (m.check, m.train_job, m.steps, m.score, m.total))
    return (f"{m.name:<22} checks {check:6.2f} s, training job outside steps and scoring {job - steps - score:6.2f} s, "
            f"parent side {total - check - job:6.2f} s")


def probe(size: dict, batch: int, device_setting: str = "auto") -> list[str]:
    """The policy's parameter count, then per precision (fp32, bf16) the seconds and peak memory of one forward and
    backward step of a LoRA adapter (r 16, all linear layers) over ``batch`` preference pairs (2 x batch sequences of
    prompt + completion tokens), the step the inner fine-tune repeats; the first step is a warm-up, the second is
    timed. Peak memory: CUDA's allocator on a GPU, this process's peak resident memory on a CPU."""
    import resource

    import torch
    from peft import get_peft_model

    from discopop.config.training import lora_settings
    from discopop.execution.devices import cuda_device_count, resolve_device

    device = resolve_device(device_setting, cuda_device_count() > 0)
    lines = [f"{size['arch']} {size['layers']} layers x {size['hidden']}, vocabulary {size['vocab']}: "
             f"{n_parameters(size) / 1e6:.1f}M parameters; device {device}"]
    length = size["prompt"] + size["completion"]
    ids = torch.randint(2, size["vocab"], (2 * batch, length), generator=torch.Generator().manual_seed(0))
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = random_model(size, length=length).to(dtype=dtype, device=device)
        model = get_peft_model(model, lora_settings(yaml_mapping(LORA)).peft_config())
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seconds = []
        for _ in range(2):
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            out = model(input_ids=ids.to(device), labels=ids.to(device))
            out.loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        if device == "cuda":
            peak = f"peak GPU {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
        else:
            peak = f"peak RSS of this process so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        lines.append(f"{precision}: LoRA ({trained / 1e6:.2f}M trained) forward+backward over {2 * batch} sequences "
                     f"of {length} tokens: {seconds[1]:.2f} s (first {seconds[0]:.2f} s); {peak}")
        del model, out
    return lines


def yaml_mapping(text: str) -> dict:
    """``LORA`` (the override's flow-style YAML) as a mapping."""
    import yaml

    return yaml.safe_load(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--n", type=int, default=16, help="candidates per configuration")
    parser.add_argument("--quick", action="store_true", help="4 candidates per configuration (~5 min on one H100)")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=64, help="held-out prompts (half score the search)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default=None, help="fp32 | bf16 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--only", choices=("full", "lora"), default=None, help="one fine-tune kind only")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="training.gradient_checkpointing=true")
    parser.add_argument("--probe", action="store_true",
                        help="no workers, no task: the policy's parameter count and one LoRA forward+backward step "
                             "in this process, in fp32 and bf16 (a memory and speed check before the comparison)")
    parser.add_argument("overrides", nargs="*", help="extra hydra overrides for every configuration")
    args = parser.parse_args()
    n = 4 if args.quick else args.n
    if args.probe:
        for line in probe(SIZES[args.size], args.batch_size, args.device):
            print(line, flush=True)
        return

    from discopop.execution.devices import cuda_device_count, resolve_device

    gpus = cuda_device_count()
    device = resolve_device(args.device, gpus > 0)
    precision = args.precision or ("bf16" if device == "cuda" else "fp32")
    card = "CPU only: no GPU figures"
    if device == "cuda":
        import torch

        card = f"{gpus} x {torch.cuda.get_device_name(0)}"
        from discopop.execution.gpu_check import check_gpu

        found = check_gpu()  # seconds; a worker that cannot use the GPU would fail every configuration below
        print("\n".join(found.lines), flush=True)
        if not found.ok:
            raise SystemExit("a sandboxed worker cannot use this GPU (see above): nothing to measure")
    root = Path(tempfile.mkdtemp(prefix="discopop-gpu-bench-"))
    build_hub(root, SIZES[args.size], args.pairs, args.heldout, seed=0)
    size = SIZES[args.size]
    common = [
        *hub_overrides(root, size, args.heldout), "training.epochs=1", f"training.lr_grid=[{args.lr}]",
        f"training.batch_size={args.batch_size}",
        f"training.threads={args.threads}", f"training.device={device}", f"training.precision={precision}",
        "training.train_timeout=1800", "training.check_timeout=120", "confirm.seeds=0", "wandb.mode=disabled",
        *(["training.gradient_checkpointing=true"] if args.gradient_checkpointing else []), *args.overrides,
    ]
    per_gpu_workers = max(1, gpus) if device == "cuda" else 1
    kinds = [k for k in ("full", "lora") if args.only in (None, k)]
    print(f"device: {device} ({card}), precision {precision}, {n} candidates per configuration, "
          f"batch {args.batch_size}, 1 epoch over {round(0.85 * args.pairs)} pairs")
    header = (f"{'configuration':<22} {'w':>2} {'steps s':>8} {'score s':>8} {'overhead':>9} {'ovh/cmp':>8} "
              f"{'total s':>8} {'peak MB':>8} {'RSS MB':>8} {'start s':>8} {'cand/h':>9} ratio")
    results: list[Measured] = []
    for kind in kinds:
        for per_gpu in (1, 2):
            lora = [f"training.lora={LORA}"] if kind == "lora" else []
            workers = per_gpu * per_gpu_workers
            name = f"{kind}, {per_gpu}/{'GPU' if device == 'cuda' else 'CPU'}"
            print(f"running {name} ({workers} worker(s)) ...", flush=True)
            m = measure(name, [*common, *lora, f"executor.workers={workers}", f"executor.workers_per_gpu={per_gpu}"], n)
            results.append(m)
            # Each row as soon as it is measured: a run cut short by a time limit still reports what it did.
            print(header + "\n" + summary(m, results[0]), flush=True)
            if m.failed and not m.total:
                print(f"stopping: every candidate of {name} failed; first: {m.failed[0]}")
                return
    print()
    print(header)
    base = results[0]
    for m in results:
        print(summary(m, base))
    by = {m.name.split(",")[0] + str(m.workers): m for m in results}
    for kind in kinds:
        one, two = by.get(f"{kind}{per_gpu_workers}"), by.get(f"{kind}{2 * per_gpu_workers}")
        if one and two and one.per_hour:
            print(f"{kind}: 2 vs 1 worker(s) per {'GPU' if device == 'cuda' else 'CPU'}: "
                  f"{two.per_hour / one.per_hour:.2f}x candidates per hour")
    full, lora = by.get(f"full{per_gpu_workers}"), by.get(f"lora{per_gpu_workers}")
    if full and lora and full.total and lora.total:
        ratio = statistics.fmean(lora.total) / statistics.fmean(full.total)
        unit = "GPU" if device == "cuda" else "CPU"
        text = f"LoRA vs full fine-tune at 1 per {unit}: {ratio:.2f}x time per candidate"
        if full.peak_gpu_mb and lora.peak_gpu_mb:
            text += f", {max(lora.peak_gpu_mb) / max(full.peak_gpu_mb):.2f}x peak GPU memory"
        print(text)
    print("overhead per candidate, split:")
    for m in results:
        print("  " + overhead_split(m))
    for m in results:
        if m.failed:
            print(f"{m.name}: {len(m.failed)} failed, first: {m.failed[0]}")
    if results and results[0].missing_layers:
        lacking = results[0].missing_layers.items()
        print("sandbox layers the workers lack: " + "; ".join(f"{k}: {v}" for k, v in lacking))


if __name__ == "__main__":
    main()
