"""How a loss is judged: the short DPO fine-tune, held-out scoring, the learning-rate protocol, the LLM judge and
the paired statistics.
"""
