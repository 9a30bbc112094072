"""Proposers and the factory that builds one from its hydra group."""

from __future__ import annotations

from typing import Any

from discopop.proposers.base import Candidate, HistoryEntry, Proposer, ProposerStop

__all__ = ["Candidate", "HistoryEntry", "Proposer", "ProposerStop", "build_proposer"]


def build_proposer(cfg: dict[str, Any], seed: int) -> Proposer:
    """Instantiate the proposer named by ``cfg['name']`` with the rest of ``cfg`` as settings."""
    name = cfg.get("name")
    settings = {k: v for k, v in cfg.items() if k != "name"}
    if name == "evolution":
        from discopop.proposers.evolution import EvolutionProposer

        return EvolutionProposer(seed=seed, **settings)
    if name == "openai":
        from discopop.proposers.openai import OpenAIProposer

        return OpenAIProposer.from_config(cfg, seed=seed)
    if name == "reference":
        from discopop.proposers.reference import ReferenceProposer

        return ReferenceProposer(**settings)
    raise ValueError(f"unknown proposer '{name}' (allowed: evolution, openai, reference)")
