"""Offline evolutionary proposer: new losses are AST transformations of archived parents.

No LLM, no network. Parents come from the history by tournament selection (``selection``), or, in the
``history_mode: none`` control arm, from the references at random (``control``); children are written by small
program transformations (``operators``, on the AST toolkit in ``program``), cleaned up (``cleanup``), and
redrawn when they only rescale, shift or re-beta a parent (``behaviour_filter``); ``children`` ties these into
one child and ``proposer`` holds ``EvolutionProposer``. Child code is only static-checked here, never executed.
"""

from discopop.config.proposer import HISTORY_MODES, POPULATIONS
from discopop.proposers.evolution.behaviour_filter import behaviour_form, same_behaviour
from discopop.proposers.evolution.children import MAX_CODE_CHARS
from discopop.proposers.evolution.operators import OPERATORS, SINGLE_OPERATORS, TWO_PARENTS
from discopop.proposers.evolution.proposer import EvolutionProposer
from discopop.proposers.evolution.selection import Parent, reference_parents

__all__ = ["HISTORY_MODES", "MAX_CODE_CHARS", "OPERATORS", "POPULATIONS", "SINGLE_OPERATORS", "TWO_PARENTS",
           "EvolutionProposer", "Parent", "behaviour_form", "reference_parents", "same_behaviour"]
