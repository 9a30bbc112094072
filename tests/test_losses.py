"""Static check and load_loss: known-bad code is rejected with the right reason, nothing executed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from discopop.contract.losses import LossRejected, code_hash, load_loss, normalize_code, static_check

SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
GOOD = f"""
import torch.nn.functional as F

def good({SIG}):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho)
"""


def body(line: str, header: str = "import torch") -> str:
    return f"{header}\n\ndef f({SIG}):\n    {line}\n    return policy_chosen_logps * beta\n"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("def f(:\n", "syntax error"),
        (body("x = 1", "import os"), "import of 'os' is not allowed"),
        (body("x = 1", "from torch import hub"), "'from torch import hub' is not allowed"),
        (body("open('/tmp/x', 'w')"), "use of 'open' is not allowed"),
        (body("eval('1')"), "use of 'eval' is not allowed"),
        (body("x = beta.__class__"), "dunder attribute '__class__'"),
        (body("torch.save(beta, 'x')"), "attribute 'save' is not allowed"),
        (body("torch.set_num_threads(1)"), "attribute 'set_num_threads' is not allowed"),
        (body("policy_chosen_logps.add_(1)"), "in-place method 'add_'"),
        (body("x = '{0.__class__}'"), "string literals are only allowed as docstrings"),
        (body("while True: pass"), "statement 'While' is not allowed"),
        (body("import subprocess"), "import of 'subprocess' is not allowed"),  # moved to the top, then refused
        (body("if beta > 0:\n        from os import system"), "'from os import system' is not allowed"),
        ("import torch\nprint('side effect')\n" + body("x=1"), "top-level 'Expr' is not allowed"),
        (GOOD + GOOD.replace("def good", "def other").split("\n", 2)[2], "expected exactly one public function"),
        ("import torch\n\ndef f(a, b):\n    return a\n", "signature of 'f' must be"),
        ("import torch\nX = torch.zeros(3)\n" + body("x=1").split("\n", 1)[1], "numeric constants"),
        # allow-list: only listed names, attributes and node kinds
        (body("x = torch.special.expit(beta)"), "'torch.special' is not on the allow-list"),
        (body("x = policy_chosen_logps.storage()"), "attribute 'storage' is not allowed"),
        (body("x = torch"), "module 'torch' may only be used as torch.<listed name>"),
        (body("x = math.pi"), "use of 'math' is not allowed (import it first)"),
        (body("abs = 1"), "name 'abs' may not be rebound"),
        (body("x = lambda y: y"), "'Lambda' is not allowed"),
        (body("x = {'a': 1}"), "'Dict' is not allowed"),
        (body("x = b'1'"), "bytes literals are not allowed"),
        (body("x = f'{beta}'"), "f-strings are not allowed"),
        (body("x = '%d' % 1"), "'%' formatting of a string is not allowed"),
        (body("x = torch.stack(*[beta])"), "star arguments are not allowed"),
        (body("x = torch.tensor(1.0, dtype='{0}')"), "plain words only"),
        (body("x = (beta, beta)[0].hex()"), "attribute 'hex' is not allowed"),
        ("import torch\nX = 10 ** 10 ** 10\n" + body("x=1").split("\n", 1)[1], "cannot be evaluated"),
        ("import torch\nX = 1" + "0" * 400 + "\n" + body("x=1").split("\n", 1)[1],
         "module-level constant is too large"),
        ("import torch\nX = 2.0 ** 1020\n" + body("x=1").split("\n", 1)[1], "module-level constant is too large"),
        ("import torch\n" + body("x=1").split("\n", 1)[1].replace("beta)", "beta: open('x'))"), "annotations may"),
        (body("x = 1", "import math as torch"), "import alias 'torch' is not allowed for module 'math'"),
        ("X = math.pi\n" + body("x=1"), "module-level assignments may only bind numeric constants"),
        (body("x = " + "-" * 5000 + "beta"), "nested too deeply"),
    ],
)
def test_static_check_rejects_with_reason(source: str, reason: str) -> None:
    with pytest.raises(LossRejected, match=None) as err:
        static_check(source)
    assert reason in str(err.value)


WITH_TORCH = GOOD.replace("import torch.nn", "import torch\nimport torch.nn")


@pytest.mark.parametrize(
    "source",
    [
        GOOD.replace("import torch.nn.functional as F", "from torch.nn import functional as F"),
        GOOD.replace("import torch.nn.functional as F", "import torch.nn.functional")
        .replace("F.", "torch.nn.functional."),
        WITH_TORCH.replace("-F.logsigmoid(beta * rho)",
                           "F.binary_cross_entropy_with_logits(beta * rho, torch.ones_like(rho), reduction='none')"),
        WITH_TORCH.replace("return", "eps = torch.finfo(rho.dtype).eps\n    return eps +"),
        GOOD.replace("rho =", "top = float('inf')\n    rho =").replace("beta * rho", "(beta * rho).clamp(max=top)"),
        WITH_TORCH.replace("beta):", "beta: float) -> torch.Tensor:"),
        "import math\nTAU = 2 * math.pi / 3\nSCALE = TAU ** 2\n" + GOOD,
    ],
)
def test_static_check_accepts_common_idioms(source: str) -> None:
    fn = load_loss(source)
    out = fn(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.1)
    assert out.shape == (1,) and torch.isfinite(out).all()


def test_rejection_names_the_line() -> None:
    with pytest.raises(LossRejected) as err:
        static_check(body("open('x')"))
    assert err.value.line == 4 and str(err.value).startswith("line 4:")


def test_load_loss_from_source_and_path(tmp_path: Path) -> None:
    fn = load_loss(GOOD)
    out = fn(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.1)
    assert torch.allclose(out, -torch.nn.functional.logsigmoid(torch.tensor([0.1])))
    path = tmp_path / "good.py"
    path.write_text(GOOD)
    assert load_loss(path).__name__ == "good"
    assert load_loss(str(path)).discopop_uses_beta


def test_load_loss_executes_nothing_before_the_check(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    bad = f"import os\nos.mkdir({str(marker)!r})\n" + body("x=1").split("\n", 1)[1]
    with pytest.raises(ValueError, match="import of 'os'"):
        load_loss(bad)
    assert not marker.exists()


def test_every_reference_loss_passes_the_static_check() -> None:
    for path in sorted(Path("discopop/proposals").glob("*.py")):
        assert static_check(path.read_text()).uses_beta, path


def test_normalisation_ignores_names_comments_and_docstrings() -> None:
    other = GOOD.replace("def good", "def renamed").replace("rho =", "# a comment\n    rho =")
    other = '"""Doc."""\n' + other
    assert normalize_code(GOOD) == normalize_code(other)
    assert code_hash(GOOD) == code_hash(other)
    assert code_hash(GOOD) != code_hash(GOOD.replace("beta * rho", "2 * beta * rho"))


@pytest.mark.parametrize("name", ["cdpo", "rdpo"])
def test_noise_robust_references_run_at_the_tasks_flip_rate(name: str) -> None:
    from discopop.proposers.reference import reference_candidate

    rho = torch.linspace(-3.0, 3.0, 7)
    zeros = torch.zeros(7)
    dpo = load_loss(reference_candidate("dpo").code)(rho, zeros, zeros, zeros, 0.5)
    at_zero = load_loss(reference_candidate(name, 0.0).code)(rho, zeros, zeros, zeros, 0.5)
    assert torch.allclose(at_zero, dpo)  # a clean task: both are DPO exactly
    textbook = load_loss(reference_candidate(name).code)(rho, zeros, zeros, zeros, 0.5)
    at_task = load_loss(reference_candidate(name, 0.25).code)(rho, zeros, zeros, zeros, 0.5)
    assert not torch.allclose(at_task, textbook)
    assert "= 0.25  # the task's flip rate" in reference_candidate(name, 0.25).code
    with pytest.raises(ValueError, match="flip rate"):
        reference_candidate(name, 0.5)
