"""Would compiling the model make the default task's fine-tunes fast enough? (issue 25: the README's run)

One training step of the embedded task's policy shape (GPT-2, 3 layers, 128 wide, 4 heads, a 16-token vocabulary,
64 sequences of 12 tokens: a batch of 32 preference pairs, chosen and rejected together), forward, backward and an
AdamW step, on one thread as a worker runs it. Three arms in one process, the same weights and batch: the eager
attention, PyTorch's SDPA attention (the transformers default), and ``torch.compile`` of the SDPA model (its compile
time reported apart, since a worker would pay it once per process). The arms alternate round by round, so a shared
machine's load hits them alike; the ratios are the figure.

    python benchmarks/compiled_step.py --steps 30 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build(attention: str, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=16, n_positions=32, n_embd=128, n_layer=3, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attention)
    return GPT2LMHeadModel(config)


def stepper(model: torch.nn.Module, ids: torch.Tensor):
    """One optimiser step of a log-likelihood loss (the backward a preference loss drives is the same size)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    mask = torch.ones_like(ids)

    def step() -> None:
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = logits.log_softmax(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the arms alternate within each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = torch.randint(0, 16, (64, 12), generator=torch.Generator().manual_seed(0))
    arms = {"eager": stepper(build("eager"), ids), "sdpa": stepper(build("sdpa"), ids)}
    compiled = torch.compile(build("sdpa"), dynamic=False)
    arms["compiled"] = stepper(compiled, ids)
    started, wall = time.process_time(), time.perf_counter()
    arms["compiled"]()  # the compile, paid once per worker process (inductor's on-disk cache makes a repeat cheaper)
    compile_seconds, compile_wall = time.process_time() - started, time.perf_counter() - wall
    for step in arms.values():
        for _ in range(3):  # warm-up
            step()
    per_step: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, step in arms.items():
            t0 = time.process_time()
            for _ in range(args.steps):
                step()
            per_step[name].append((time.process_time() - t0) / args.steps * 1000)
    base = statistics.median(per_step["sdpa"])
    print(f"compile (once per process): {compile_seconds:.1f} CPU-s of this process, {compile_wall:.1f} s wall")
    for name, values in per_step.items():
        median = statistics.median(values)
        print(f"{name:9s} {median:7.2f} CPU-ms per step (median of {args.rounds} rounds), {median / base:.2f}x sdpa")


if __name__ == "__main__":
    main()
