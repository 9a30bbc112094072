"""The original DiscoPOP method form (``self`` first, ``self.beta``, imports in the body) is accepted as input
and rewritten into the contract form before the static check; any other use of ``self`` is refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from discopop.cli.check import check_source
from discopop.contract.checks import CheckFailed, check_loss
from discopop.contract.losses import LossRejected, code_hash, load_loss, normalise_loss, static_check

PAPER = Path(__file__).resolve().parent / "paper_losses"
# LRML as the DiscoPOP trainer writes it: a method, still indented as inside the class body.
METHOD = '''
    def log_ratio_modulated_loss(
        self,
        policy_chosen_logps: torch.FloatTensor,
        policy_rejected_logps: torch.FloatTensor,
        reference_chosen_logps: torch.FloatTensor,
        reference_rejected_logps: torch.FloatTensor,
    ) -> torch.FloatTensor:
        import torch
        import torch.nn.functional as F

        tau = 0.05
        pi_logratios = policy_chosen_logps - policy_rejected_logps
        ref_logratios = reference_chosen_logps - reference_rejected_logps
        logits = (pi_logratios - ref_logratios) * self.beta
        log_ratio_modulation = torch.sigmoid(logits / tau)
        logistic_component = -F.logsigmoid(logits)
        exp_component = torch.exp(-logits)
        return logistic_component * (1 - log_ratio_modulation) + exp_component * log_ratio_modulation
'''


def inputs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(16, generator=gen) * 4 - 20 for _ in range(4)]


def test_method_form_becomes_the_contract_form() -> None:
    text = normalise_loss(METHOD)
    assert "self" not in text
    assert text.index("import torch.nn.functional as F") < text.index("def log_ratio_modulated_loss(")
    assert static_check(text).function_name == "log_ratio_modulated_loss"
    assert static_check(METHOD).uses_beta  # callers may pass the method form as it is


def test_method_form_loads_and_matches_the_contract_lrml() -> None:
    method, contract = load_loss(METHOD), load_loss(PAPER / "lrml.py")
    assert torch.allclose(method(*inputs(), 0.1), contract(*inputs(), 0.1))
    assert "self" not in method.discopop_source


def test_contract_form_is_returned_unchanged() -> None:
    source = (PAPER / "cell.py").read_text()
    assert normalise_loss(source) is source


def test_method_and_contract_forms_hash_alike() -> None:
    assert code_hash(METHOD) == code_hash(normalise_loss(METHOD))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("* self.beta", "* self.beta * (1 - self.label_smoothing)"), "'self.label_smoothing' is not available"),
        (("tau = 0.05", "tau = self"), "'self' may only be used as self.beta"),
        (("tau = 0.05", "self.beta = 0.05"), "'self.beta' is not available"),
        (("import torch\n", "import os\n"), "import of 'os' is not allowed"),
    ],
)
def test_other_uses_of_self_and_forbidden_imports_are_refused(change: tuple[str, str], reason: str) -> None:
    source = METHOD.replace(*change)
    assert source != METHOD
    for check in (static_check, load_loss):
        with pytest.raises(LossRejected, match=None) as err:
            check(source)
        assert reason in str(err.value) and "\n" not in str(err.value)


class _ToMethodForm(ast.NodeTransformer):
    """``beta`` -> ``self.beta`` (how the DiscoPOP trainer's methods read it)."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == "beta":
            return ast.copy_location(ast.Attribute(ast.Name("self", ast.Load()), "beta", ast.Load()), node)
        return node


def method_form(contract_source: str) -> str:
    """A contract-form loss written the way the DiscoPOP code base has it: the loss a method (``self``
    first, no ``beta`` parameter, ``self.beta``) with its imports in its body; module constants and
    helper functions stay where they are. A file that is only the loss is indented as in the class body."""
    tree = ast.parse(contract_source)
    name = static_check(contract_source).function_name
    imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    [fn] = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == name]
    fn.args.args = [ast.arg("self"), *fn.args.args[:4]]
    fn.body = [*imports, *(_ToMethodForm().visit(s) for s in fn.body)]
    rest = [s for s in tree.body if s not in imports and not (isinstance(s, ast.Expr) and s is tree.body[0])]
    text = ast.unparse(ast.fix_missing_locations(ast.Module(body=rest, type_ignores=[])))
    if rest == [fn]:
        text = "\n".join("    " + line if line else line for line in text.splitlines())
    return text + "\n"


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.py")), ids=lambda p: p.stem)
def test_paper_losses_in_method_form_are_accepted_and_compute_the_same(path: Path) -> None:
    source = method_form(path.read_text())
    assert "(self, " in source and "import" not in source.split("def ", 1)[0]
    method, contract = load_loss(source), load_loss(path)
    for beta in (0.05, 0.5):
        assert torch.allclose(method(*inputs(), beta), contract(*inputs(), beta), equal_nan=True)


def test_stateful_and_wrong_shape_method_losses_are_refused_with_one_line() -> None:
    stateful = METHOD.replace("tau = 0.05", "self.calls = 1\n        tau = 0.05")
    with pytest.raises(LossRejected) as err:
        load_loss(stateful)
    assert "self.calls" in str(err.value) and "\n" not in str(err.value)
    last = "return logistic_component * (1 - log_ratio_modulation) + exp_component * log_ratio_modulation"
    wrong_shape = METHOD.replace(last, f"return ({last.removeprefix('return ')}).mean()")
    assert wrong_shape != METHOD
    with pytest.raises(CheckFailed, match=r"one loss per example") as err:
        check_loss(load_loss(wrong_shape))
    assert "\n" not in str(err.value)


def test_check_shows_the_normalised_code(tmp_path: Path) -> None:
    verdict = check_source(METHOD, timeout=30)
    assert verdict["valid"], verdict
    assert verdict["normalised"] == normalise_loss(METHOD) and "self" not in verdict["normalised"]
    assert "normalised" not in check_source((PAPER / "cell.py").read_text(), timeout=30)


def test_method_form_without_imports_gets_torch_and_f_as_the_trainer_had_them() -> None:
    bare = METHOD.replace("        import torch\n        import torch.nn.functional as F\n", "")
    assert "import" not in bare
    text = normalise_loss(bare)
    assert "import torch\n" in text and "import torch.nn.functional as F" in text
    assert torch.allclose(load_loss(bare)(*inputs(), 0.1), load_loss(PAPER / "lrml.py")(*inputs(), 0.1))
    contract_without_imports = "def f(a, b, c, d, beta):\n    return -F.logsigmoid(beta * (a - b - c + d))\n"
    assert normalise_loss(contract_without_imports) == contract_without_imports  # only the method form is completed


def plain_function_form(contract_source: str) -> str:
    """A contract-form loss with its imports moved into the loss function's body (how four of the DiscoPOP
    paper's losses are written as plain functions); module constants and helpers stay where they are."""
    tree = ast.parse(contract_source)
    name = static_check(contract_source).function_name
    imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    [fn] = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == name]
    fn.body = [*imports, *fn.body]
    rest = [s for s in tree.body if s not in imports]
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=rest, type_ignores=[]))) + "\n"


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.py")), ids=lambda p: p.stem)
def test_paper_losses_as_plain_functions_importing_in_the_body_are_accepted(path: Path) -> None:
    source = plain_function_form(path.read_text())
    assert not any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in ast.parse(source).body)
    text = normalise_loss(source)
    in_bodies = [n for f in ast.parse(text).body if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
                 if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert in_bodies == [], "the body imports stayed in the body"
    plain, contract = load_loss(source), load_loss(path)
    for beta in (0.05, 0.5):
        assert torch.allclose(plain(*inputs(), beta), contract(*inputs(), beta), equal_nan=True)
    assert code_hash(source) == code_hash(text)


def test_a_helper_importing_inside_a_branch_is_normalised_too() -> None:
    source = (
        "def _margin(a, b, c, d):\n    if True:\n        import torch\n    return torch.sub(a - b, c - d)\n\n"
        "def f(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
        "    import torch.nn.functional as F\n    import torch\n"
        "    return -F.logsigmoid(beta * _margin(policy_chosen_logps, policy_rejected_logps,\n"
        "                                        reference_chosen_logps, reference_rejected_logps))\n"
    )
    text = normalise_loss(source)
    assert text.count("import torch\n") == 1 and "    if True:\n        pass" in text
    assert torch.allclose(load_loss(source)(*inputs(), 0.1), load_loss(PAPER.parent.parent / "discopop" / "proposals"
                                                                           / "dpo.py")(*inputs(), 0.1))


@pytest.mark.parametrize(("statement", "reason"), [
    ("import os", "import of 'os' is not allowed"),
    ("import numpy as np", "import of 'numpy' is not allowed"),
    ("from torch import hub", "'from torch import hub' is not allowed"),
    ("import math as torch", "import alias 'torch' is not allowed for module 'math'"),
])
def test_a_disallowed_import_in_a_plain_function_body_is_refused_by_name(statement: str, reason: str) -> None:
    source = plain_function_form((PAPER / "cell.py").read_text()).replace("    import torch\n",
                                                                           f"    import torch\n    {statement}\n", 1)
    assert statement in source
    for check in (static_check, load_loss):
        with pytest.raises(LossRejected) as err:
            check(source)
        assert reason in str(err.value) and "\n" not in str(err.value)
