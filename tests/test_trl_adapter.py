"""DiscoveredLossDPOTrainer: parity with TRL's own losses, and a loud guard on the TRL internals it uses."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import trl
from datasets import Dataset
from transformers import GPT2LMHeadModel
from trl import DPOConfig, DPOTrainer

from discopop.dpo_trainer import DiscoveredLossDPOTrainer
from discopop.tasks.tiny import save_tiny, tiny_causal_lm

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"


def tiny_setup(tmp_path: Path):
    model, tok = tiny_causal_lm()
    save_tiny(tmp_path / "model", model, tok)
    rows = [{"prompt": f"{a:02d}+{b:02d}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
            for a, b in [(1, 2), (13, 7), (40, 41), (9, 9), (25, 30), (77, 11), (5, 60), (33, 33)]]
    return tok, Dataset.from_list(rows)


def train(tmp_path: Path, loss_type: str | None, loss_file: str | None):
    tok, data = tiny_setup(tmp_path)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "model")
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
                     logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, beta=0.1,
                     loss_type=loss_type or "sigmoid", disable_tqdm=True)
    if loss_file is None:
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    else:
        trainer = DiscoveredLossDPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                           loss_fn=str(PROPOSALS / loss_file))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer.state.log_history


@pytest.mark.parametrize(("loss_type", "loss_file"), [("sigmoid", "dpo.py"), ("hinge", "hinge.py"),
                                                      ("discopop", "lrml.py")])
def test_parity_with_trl_builtin_losses(tmp_path: Path, loss_type: str, loss_file: str) -> None:
    ref_losses, ref_params, _ = train(tmp_path / "trl", loss_type, None)
    our_losses, our_params, history = train(tmp_path / "ours", None, loss_file)
    assert len(ref_losses) == len(our_losses) == 4
    assert our_losses == pytest.approx(ref_losses, abs=1e-5)
    max_diff = max(float((ref_params[k] - our_params[k]).abs().max()) for k in ref_params)
    assert max_diff < 1e-5, f"{loss_type}: parameters differ by {max_diff}"
    logged = {k for h in history for k in h}
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"} <= logged


def test_trl_internals_still_where_discopop_expects_them() -> None:
    """If this fails, a TRL release moved what discopop/dpo_trainer.py overrides: update that module (only it)."""
    where = f"trl {trl.__version__}"
    assert hasattr(DPOTrainer, "_compute_loss"), f"{where}: DPOTrainer._compute_loss is gone"
    params = list(inspect.signature(DPOTrainer._compute_loss).parameters)
    assert params == ["self", "model", "inputs", "return_outputs"], f"{where}: _compute_loss signature is {params}"
    assert hasattr(DPOTrainer, "compute_ref_log_probs"), f"{where}: DPOTrainer.compute_ref_log_probs is gone"
    source = inspect.getsource(DPOTrainer._compute_loss)
    for needle in ("fused_lm_head=True", "completion_mask", "ref_chosen_logps", "self._metrics[mode]",
                   "self.aux_loss_enabled"):
        assert needle in source, f"{where}: DPOTrainer._compute_loss no longer uses {needle!r}"


def test_trl_triton_switches_are_where_the_worker_turns_them_off() -> None:
    """A sandboxed worker may start no process, so TRL's Triton kernels (compiled by a ptxas subprocess on
    first use) must be off there; if this fails, a TRL release moved the switches use_torch_log_softmax_kernels sets."""
    import torch
    import trl.kernels.chunked_logprob as chunked
    import trl.trainer.utils as trl_utils

    from discopop.dpo_trainer import use_torch_log_softmax_kernels

    where = f"trl {trl.__version__}"
    source = inspect.getsource(trl_utils.selective_log_softmax)
    assert "is_triton_available()" in source, f"{where}: selective_log_softmax no longer asks is_triton_available()"
    assert "_TRITON_AVAILABLE" in inspect.getsource(chunked._use_triton), f"{where}: _use_triton moved"
    saved = trl_utils.is_triton_available, chunked._TRITON_AVAILABLE
    try:
        # As on a CUDA machine with Triton installed:
        trl_utils.is_triton_available, chunked._TRITON_AVAILABLE = (lambda *a, **k: True), True
        assert chunked._use_triton(torch.device("cuda"))
        use_torch_log_softmax_kernels()
        assert not trl_utils.is_triton_available() and not chunked._use_triton(torch.device("cuda"))
        logits, index = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
        expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(trl_utils.selective_log_softmax(logits, index), expected, atol=1e-6)
    finally:
        trl_utils.is_triton_available, chunked._TRITON_AVAILABLE = saved


def test_unsupported_config_is_refused(tmp_path: Path) -> None:
    tok, data = tiny_setup(tmp_path)
    args = DPOConfig(output_dir=str(tmp_path / "o"), ld_alpha=0.5, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="ld_alpha"):
        DiscoveredLossDPOTrainer(model=GPT2LMHeadModel.from_pretrained(tmp_path / "model"), args=args,
                                 train_dataset=data, processing_class=tok, loss_fn=str(PROPOSALS / "dpo.py"))


def test_a_reference_name_loads_the_shipped_loss_and_a_path_loads_the_users_file(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from discopop.dpo_trainer import resolve_loss

    shipped = resolve_loss("lrml")
    assert shipped.__name__ == "lrml" and "TAU" in shipped.discopop_source
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lrml.py").write_text((PROPOSALS / "dpo.py").read_text())
    assert resolve_loss("lrml.py").__name__ == "dpo"  # a path: the user's own file, even if it is called lrml.py


def test_a_loss_type_the_trainer_ignores_is_warned_about(tmp_path: Path) -> None:
    tok, data = tiny_setup(tmp_path)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "model")

    def make(loss_type: str) -> None:
        args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1,
                         report_to=[], save_strategy="no", use_cpu=True, loss_type=loss_type, disable_tqdm=True)
        DiscoveredLossDPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, loss_fn="dpo")

    with pytest.warns(UserWarning, match=r"loss_type=\['ipo'\] is ignored"):
        make("ipo")
    import warnings  # lazy: only this test checks that the default stays silent

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        make("sigmoid")
    assert not [w for w in seen if "is ignored" in str(w.message)]
