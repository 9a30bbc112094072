"""discopop: LLM-driven discovery of preference-optimization losses (DiscoPOP), trained with TRL.

``discopop.load_loss(path_or_source)`` loads a loss in the contract form (static-checked first);
``discopop.dpo_trainer.DiscoveredLossDPOTrainer`` trains with one.
"""

from discopop.contract.losses import load_loss

__all__ = ["load_loss"]
__version__ = "0.1.0"
