"""A loss oracle's first answer costs what its later ones do, and its per-request state watch stays exact.

Why: ``torch.autograd.grad`` with an explicit ``grad_output`` imports ``torch.fx.experimental.symbolic_shapes`` (and
sympy) on its first call. Every oracle's first forward with gradients paid that, 0.3-0.8 s of a candidate's critical
path and most of what the oracle cost a candidate on the CPU (``benchmarks/isolation_cost.py``). The oracle now
imports it before ``READY``, and the fork template before it forks; these tests fail if a first answer imports
anything again. ``StateWatch.patched`` runs after every request; its fast path must never miss a rebinding.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from discopop.sandbox.state_watch import StateWatch

FIRST_ANSWER = r'''
import json, os, struct, sys
preimport = sys.argv[1] == "template"
if preimport:  # the fork path: a child runs Oracle() in the template's pre-imported state
    from discopop.sandbox.oracle_template import _preimport
    _preimport("discopop.sandbox.oracle")
from discopop.sandbox import oracle_wire as wire
from discopop.sandbox.oracle import Oracle
from discopop.proposers.reference import reference_candidate

code = reference_candidate("dpo").code.encode()
oracle = Oracle()
before = set(sys.modules)
oracle.load(code)
head = wire.FORWARD_HEAD.pack(0.1, 8, 0, 0, 0, 0, 1 / 8)
body = b"".join(struct.pack("<8f", *[-1.0 - i * 0.1 - k for i in range(8)]) for k in range(4))
reply, _, flags = oracle.forward(os.urandom(8), 0xF | wire.GRAD_ENABLED | wire.WANT_GRADS, head + body)
assert flags & (wire.OUT_GRADS | wire.OUT_REQUIRES_GRAD), flags
print(json.dumps({"new": sorted(set(sys.modules) - before), "carried": bool(flags & wire.OUT_GRADS)}))
'''


def first_answer_imports(start: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FIRST_ANSWER, start], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_spawned_oracles_first_answer_with_gradients_imports_nothing() -> None:
    seen = first_answer_imports("spawn")
    assert seen["carried"]
    assert seen["new"] == [], f"the first forward imported {seen['new'][:8]} ({len(seen['new'])} modules)"


def test_a_forked_oracles_first_answer_with_gradients_imports_nothing() -> None:
    seen = first_answer_imports("template")
    assert seen["carried"]
    assert seen["new"] == [], f"the first forward imported {seen['new'][:8]} ({len(seen['new'])} modules)"


def test_the_state_watch_sees_a_rebinding_to_an_equal_object() -> None:
    watch = StateWatch(threads=1)
    original = math.pi
    try:
        math.pi = float(str(original))  # equal, not the same object
        assert math.pi == original and math.pi is not original
        assert not watch.unchanged("math")
        assert watch.patched() == ["math.pi"]
    finally:
        math.pi = original
    assert watch.unchanged("math") and watch.patched() == []


def test_the_state_watch_reads_a_reordered_namespace_as_unpatched() -> None:
    """Deleting and re-adding the very same binding moves it to the end: not a patch, though the fast path says
    "look closer"."""
    watch = StateWatch(threads=1)
    value = math.tau
    try:
        del math.tau
        assert watch.patched() == ["math.tau"]
        math.tau = value
        assert not watch.unchanged("math")
        assert watch.patched() == []
    finally:
        math.tau = value


def test_the_state_watch_sees_a_new_attribute_that_is_not_a_module() -> None:
    watch = StateWatch(threads=1)
    try:
        math.discopop_added = 1
        assert watch.patched() == ["math.discopop_added"]
    finally:
        del math.discopop_added
    assert watch.unchanged("math")
