"""Proposing with a language model: the OpenAI-compatible client, its options and spending, the prompts and the
parsing of replies.
"""
