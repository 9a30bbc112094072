"""Proposers and the factory that builds one from its hydra group."""

from __future__ import annotations

from typing import Any

from discopop.config import EvolutionSettings, OpenAISettings, proposer_settings
from discopop.proposers.base import Candidate, HistoryEntry, Proposer, ProposerStop
from discopop.proposers.evolution import EvolutionProposer
from discopop.proposers.reference import ReferenceProposer

__all__ = ["Candidate", "HistoryEntry", "Proposer", "ProposerStop", "build_proposer"]


def build_proposer(cfg: Any, seed: int) -> Proposer:
    """Instantiate the proposer its ``proposer`` settings name (a plain mapping is read as those settings)."""
    settings = proposer_settings(cfg)  # a mistake is a ConfigError, a ValueError of one line
    if isinstance(settings, EvolutionSettings):
        return EvolutionProposer(seed=seed, **settings.kwargs())
    if isinstance(settings, OpenAISettings):
        # lazy: openai only when the openai proposer is chosen
        from discopop.proposers.llm.proposer import OpenAIProposer

        return OpenAIProposer(seed=seed, **settings.kwargs())
    return ReferenceProposer(**settings.kwargs())
