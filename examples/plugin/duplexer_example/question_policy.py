"""``--policy example``: the built-in turn-taking rules with one change, a question ends the turn sooner.

The built-in policy waits ``end_of_turn_ms`` of silence (or what an end-of-turn detector asks for)
before it commits a reply. This one reads the turn's final transcript: when it ends with a question
mark, the user has asked and is waiting, so the wait is cut to ``question_end_of_turn_ms``. Anything
else waits as before.

A policy plug-in is a :class:`PolicyParams` subclass: its own parameters are its fields, and its
rules are its ``table``, a :class:`PolicyTable` built from a transition table and timers. Building
the table checks it as the built-in one is checked (every (state, event) pair declared, targets real
phases); the controller then enforces the targets at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from duplexer.policies.params import PolicyParams
from duplexer.policies.rules import TIMERS, TRANSITIONS
from duplexer.policies.state import ControllerState, Phase
from duplexer.policies.table import PolicyTable

QUESTION_END_OF_TURN_MS = 250.0


def question_end_of_turn_due(s: ControllerState, params: PolicyParams) -> float | None:
    """When the pause's end of turn is due: the built-in wait, cut short after a question."""
    if s.speaking or s.silence_since_ms is None:
        return None
    wait_ms = params.effective_end_of_turn_ms(s.eot_probability)
    if s.user_text.rstrip().endswith("?"):
        wait_ms = min(wait_ms, getattr(params, "question_end_of_turn_ms", QUESTION_END_OF_TURN_MS))
    if s.awaiting_final:  # no transcript yet for the newest speech: wait for it, as the built-in rule does
        wait_ms += params.asr_final_timeout_ms
    due_ms = s.silence_since_ms + wait_ms
    if s.onset_candidate_ms is not None:  # the user may be going on: never commit onto it
        due_ms = max(due_ms, s.onset_candidate_ms + params.onset_hold_max_ms)
    return due_ms


_BUILT_IN_END_OF_TURN = TIMERS[Phase.USER_PAUSED][0]

EXAMPLE_TABLE = PolicyTable(
    name="example",
    # Every (state, event) pair as the built-in table declares it; the change is in the timer below,
    # which the built-in Tick rule of UserPaused fires (it fires the running policy's timers).
    transitions={phase: dict(rules) for phase, rules in TRANSITIONS.items()},
    timers={
        **TIMERS,
        Phase.USER_PAUSED: (
            replace(
                _BUILT_IN_END_OF_TURN,
                due_ms=question_end_of_turn_due,
                note="silence >= the end-of-turn wait, question_end_of_turn_ms after a question: commit",
            ),
        ),
    },
)


@dataclass(frozen=True)
class QuestionPolicy(PolicyParams):
    """The live policy's parameters, and one more: the end-of-turn wait after a question."""

    table: ClassVar[PolicyTable | None] = EXAMPLE_TABLE

    question_end_of_turn_ms: float = QUESTION_END_OF_TURN_MS
    """Silence that ends a turn whose transcript ends with "?" (never longer than the usual wait)."""


EXAMPLE_POLICY = QuestionPolicy()
"""What the ``example`` entry point names: the parameters, whose class carries the rules."""
