"""The allow-list tables, and the losses that must keep passing the check built on them.

Compatibility corpus: the reference losses in ``discopop/proposals/`` and the DiscoPOP paper's published
losses (``tests/paper_losses/``, contract form) pass the static check, load, and pass the numeric checks.
"""

from __future__ import annotations

import builtins
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from discopop.contract import allowlist
from discopop.contract.checks import check_loss
from discopop.contract.losses import LossRejected, load_loss, static_check

TESTS = Path(__file__).resolve().parent
CORPUS = sorted((TESTS.parent / "discopop" / "proposals").glob("*.py")) + sorted((TESTS / "paper_losses").glob("*.py"))
PAPER = {"lrml", "padll", "aqfl", "aql", "dbaql", "cell", "pfl"}
# Names that reach files, processes, compilers, deserialisers or global state: none may ever be listed.
NEVER = {"save", "load", "jit", "hub", "ops", "library", "utils", "classes", "compile", "package", "serialization",
         "backends", "cuda", "set_num_threads", "set_default_dtype", "set_grad_enabled", "manual_seed", "os", "sys",
         "torch", "storage", "untyped_storage", "numpy", "data_ptr", "apply_", "map_", "register_hook", "backward",
         "grad", "data", "format", "format_map", "from_file", "tofile", "eval", "exec", "open", "getattr", "vars",
         "globals", "type", "object", "print", "__import__", "gi_frame", "f_globals"}


@pytest.mark.parametrize(("table", "module"), [(allowlist.TORCH, torch), (allowlist.FUNCTIONAL, F),
                                               (allowlist.MATH, math), (allowlist.BUILTINS, builtins)])
def test_every_module_entry_exists(table: set[str], module) -> None:
    missing = sorted(name for name in table if not hasattr(module, name))
    assert not missing, f"listed but absent from {module.__name__}: {missing}"


def test_every_value_attribute_exists_on_a_tensor_or_finfo() -> None:
    tensor, info = torch.zeros(2, 2), torch.finfo(torch.float32)
    missing = sorted(n for n in allowlist.TENSOR_METHODS if not hasattr(tensor, n))
    integer = torch.iinfo(torch.int64)
    missing += sorted(n for n in allowlist.INFO_ATTRS if not hasattr(info, n) and not hasattr(integer, n))
    assert not missing, missing


def test_no_listed_name_is_private_in_place_or_known_dangerous() -> None:
    tables = [allowlist.TORCH, allowlist.FUNCTIONAL, allowlist.MATH, allowlist.VALUE_ATTRS, allowlist.BUILTINS]
    listed = set().union(*tables)
    assert not [n for n in listed if n.startswith("_") or n.endswith("_")]
    assert not listed & NEVER, sorted(listed & NEVER)


def test_corpus_covers_the_paper_losses() -> None:
    assert PAPER <= {p.stem for p in CORPUS if p.parent.name == "paper_losses"}
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_published_and_reference_losses_pass_and_load(path: Path) -> None:
    info = static_check(path.read_text())
    fn = load_loss(path)
    assert fn.__name__ == info.function_name
    report = check_loss(fn)
    assert report.uses_beta == info.uses_beta


def test_idiomatic_variant_equals_lrml() -> None:
    inputs = [torch.randn(16) * 4 - 20 for _ in range(4)]
    plain, idioms = load_loss(TESTS / "paper_losses" / "lrml.py"), load_loss(TESTS / "paper_losses" / "lrml_idioms.py")
    assert torch.allclose(plain(*inputs, 0.1), idioms(*inputs, 0.1), atol=1e-5)


def test_load_loss_builtins_are_exactly_the_listed_ones() -> None:
    fn = load_loss(TESTS / "paper_losses" / "lrml.py")
    assert set(fn.__globals__["__builtins__"]) == allowlist.BUILTINS | {"__import__"}


def test_load_loss_refuses_what_static_check_refuses() -> None:
    source = (TESTS / "paper_losses" / "cell.py").read_text().replace("alpha = 0.5", "alpha = torch.hub")
    with pytest.raises(LossRejected, match="'torch.hub' is not on the allow-list") as checked:
        static_check(source)
    with pytest.raises(LossRejected) as loaded:
        load_loss(source)
    assert str(checked.value) in str(loaded.value)
