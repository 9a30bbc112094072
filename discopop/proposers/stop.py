"""The one error by which a proposer (or the judge, or a spent budget) stops a run cleanly.

A module of its own so that ``llm.metering`` can raise it without importing ``base``, which names
the ``Meter`` in its hooks.
"""


class ProposerStop(RuntimeError):
    """The proposer cannot go on (bad credentials, budget spent): the run stops cleanly with this line."""
