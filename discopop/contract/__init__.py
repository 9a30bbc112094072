"""The loss contract: what a loss is, what it may name, the static and numeric checks, and how a loss pushes
(diagnostics).
"""
