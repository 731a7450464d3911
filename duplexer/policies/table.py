"""A policy's transition table and its timers, checked whole when it is built.

The built-in rules (:mod:`duplexer.policies.rules`) and every policy plug-in go through the same
checks here, so a plug-in is held to the promises the built-in table keeps: every (state, event)
pair of :data:`CONTROLLER_INPUTS` is declared (as a transition or as ignored), a rule names only
real phases other than its own as targets, and a phase has timers exactly when its tick does
something. The controller enforces the targets at every step (:func:`duplexer.policies.controller.step`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from duplexer.policies.state import Phase, Rule, Timer
from duplexer.runtime.events import (
    AsrFinal,
    AsrPartial,
    EndOfTurnProbability,
    Event,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    SpeakRequest,
    Tick,
    VadOnsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
)

CONTROLLER_INPUTS: tuple[type[Event], ...] = (
    VadOnsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
    AsrPartial,
    AsrFinal,
    EndOfTurnProbability,
    PlayoutStarted,
    PlayoutDone,
    PlayoutStopped,
    SpeakRequest,
    Tick,
)
"""Every event type the controller consumes. Playout progress is not one: no rule needs it, and on
Ray it would cross to the controller's host five times a second for nothing. Nor is ReplyReady: no
rule waits for audio to be ready (playout starts a committed reply's audio when it has some)."""

Transitions = Mapping[Phase, Mapping[type[Event], Rule]]
Timers = Mapping[Phase, tuple[Timer, ...]]


class PolicyTableError(ValueError):
    """A table breaks one of the promises every policy keeps; the message names the pair or phase."""


@dataclass(frozen=True, eq=False)
class PolicyTable:
    """A policy's rules: a :class:`Rule` for every (phase, event type) pair and the timers per phase.

    ``name`` says whose table it is in errors. Built only through the checks (a
    :class:`PolicyTableError` naming the first broken pair), so a table that exists is whole.
    The mappings are kept as given, not copied.
    """

    name: str
    transitions: Transitions
    timers: Timers

    def __post_init__(self) -> None:
        check_table(self.name, self.transitions, self.timers)

    def rule_for(self, phase: Phase, kind: type[Event]) -> Rule | None:
        """The declared rule for a pair, None when the pair is not declared (the caller raises)."""
        return self.transitions[phase].get(kind)


def _pair(phase: object, kind: type[Event]) -> str:
    return f"({getattr(phase, 'value', phase)}, {kind.__name__})"


def check_table(name: str, transitions: Transitions, timers: Timers) -> None:
    """Raise :class:`PolicyTableError` naming the first pair or phase that breaks a promise."""
    where = f"policy table {name!r}"
    if not isinstance(transitions, Mapping) or not isinstance(timers, Mapping):
        raise PolicyTableError(f"{where}: transitions and timers must be mappings keyed by Phase")
    for key in [*transitions, *timers]:
        if not isinstance(key, Phase):
            raise PolicyTableError(f"{where}: {key!r} is not a Phase")
    for phase in Phase:
        rules = transitions.get(phase)
        if rules is None:
            raise PolicyTableError(f"{where} leaves state {phase.value} undeclared: every pair needs a rule")
        for kind in rules:
            if kind not in CONTROLLER_INPUTS:
                raise PolicyTableError(f"{where} declares {_pair(phase, kind)}, an event the controller never gets")
        for kind in CONTROLLER_INPUTS:
            rule = rules.get(kind)
            pair = _pair(phase, kind)
            if rule is None:
                raise PolicyTableError(
                    f"{where} leaves the pair {pair} undeclared: declare it as a transition or as ignored"
                )
            if not isinstance(rule, Rule):
                raise PolicyTableError(f"{where}: the rule for {pair} is a {type(rule).__name__}, not a Rule")
            if rule.ignored and rule.targets:
                raise PolicyTableError(f"{where}: {pair} is ignored yet declares targets")
            if not rule.ignored and not callable(rule.handler):
                raise PolicyTableError(f"{where}: {pair} names no callable handler")
            for target in rule.targets:
                if not isinstance(target, Phase):
                    raise PolicyTableError(f"{where}: {pair} names {target!r} as a target, not a Phase")
                if target is phase:
                    raise PolicyTableError(f"{where}: {pair} lists its own state as a target")
            if not rule.note:
                raise PolicyTableError(f"{where}: {pair} has no explanation (Rule.note)")
        phase_timers = timers.get(phase, ())
        if not all(isinstance(timer, Timer) for timer in phase_timers):
            raise PolicyTableError(f"{where}: the timers of {phase.value} must be Timer objects")
        if rules[Tick].ignored == bool(phase_timers):
            raise PolicyTableError(
                f"{where}: state {phase.value} "
                + ("has timers but ignores Tick" if phase_timers else "handles Tick but has no timers")
            )
