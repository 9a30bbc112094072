"""Why a failed job's oracle is waited for (``oracle_supply.death_grace``) and what its death explains."""

from __future__ import annotations

from discopop.sandbox import oracle_wire as wire
from discopop.sandbox.oracle_supply import DEATH_GRACE, death_grace, explain_oracle_death

HUNG = f"loss oracle: {wire.HUNG_UP} (mid-reply)"


def test_only_an_oracle_that_hung_up_is_given_time_to_exit() -> None:
    assert death_grace("oracle", HUNG) == DEATH_GRACE > 0
    assert death_grace("oracle", "loss oracle: malformed reply (forged ok)") == 0.0  # still running: killed at once
    assert death_grace("oracle", "loss oracle timed out after 5 s") == 0.0
    assert death_grace("guard", HUNG) == 0.0  # another stage: its own reason stands
    assert death_grace(None, None) == 0.0  # no failure reply (a clean reply, a timeout of the worker)


def test_the_death_explains_only_a_hang_up() -> None:
    died = "worker killed by signal 9 (SIGKILL)"
    assert explain_oracle_death("oracle", HUNG, died) == ("sandbox", "loss oracle died: killed by signal 9 (SIGKILL)")
    assert explain_oracle_death("oracle", HUNG, None) == ("oracle", HUNG)  # it had not died: the hang-up stands
    refused = "loss oracle: malformed reply (forged ok)"
    assert explain_oracle_death("oracle", refused, died) == ("oracle", refused)  # the refusal is the cause
