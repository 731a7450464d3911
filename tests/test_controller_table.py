"""The transition table is data: every (state, event) pair is declared, and the rest is an error."""

from __future__ import annotations

import pytest

from duplexer.policies.controller import (
    CONTROLLER_INPUTS,
    TRANSITIONS,
    Controller,
    Phase,
    PolicyParams,
    UndeclaredTransition,
    rule_for,
)
from duplexer.policies.render import render
from duplexer.runtime.events import HistoryUpdated, Tick


def test_every_state_event_pair_is_declared() -> None:
    assert set(TRANSITIONS) == set(Phase)
    for phase in Phase:
        declared = set(TRANSITIONS[phase])
        assert declared == set(CONTROLLER_INPUTS), f"{phase}: missing {set(CONTROLLER_INPUTS) - declared}"
        for kind in CONTROLLER_INPUTS:
            rule = rule_for(phase, kind)
            assert rule.ignored or rule.handler is not None
            assert rule.note, f"{phase} x {kind.__name__} has no explanation"


def test_an_undeclared_event_is_an_error_naming_state_and_event() -> None:
    c = Controller("s")
    with pytest.raises(UndeclaredTransition, match=r"HistoryUpdated in state Silence"):
        c.handle(HistoryUpdated(session_id="s", ts_ms=0.0, role="user", text="hi"), 0.0)


def test_transition_targets_are_real_phases() -> None:
    for rules in TRANSITIONS.values():
        for rule in rules.values():
            assert all(isinstance(t, Phase) for t in rule.targets)


def test_policy_show_prints_every_pair_and_the_parameters() -> None:
    table = render("table")
    for phase in Phase:
        for kind in CONTROLLER_INPUTS:
            assert any(phase.value in line and kind.__name__ in line for line in table.splitlines())
    for name in PolicyParams.field_names():
        assert f"{name} = " in table


def test_diagrams_name_the_barge_in_and_speculation_edges() -> None:
    mermaid = render("mermaid")
    assert mermaid.startswith("stateDiagram-v2")
    assert "BotReplying --> UserOverlap" in mermaid
    assert "UserPaused --> UserSpeaking" in mermaid
    dot = render("dot")
    assert dot.startswith("digraph") and '"UserOverlap" -> "UserSpeaking"' in dot


@pytest.mark.parametrize(
    ("field", "value"),
    [("pause_ms", -1.0), ("pause_ms", 900.0), ("end_of_turn_min_ms", 800.0), ("min_speech_probability", 2.0)],
)
def test_inconsistent_parameters_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PolicyParams(**{field: value})  # type: ignore[arg-type]


def test_end_of_turn_detector_moves_the_silence_within_bounds() -> None:
    p = PolicyParams(end_of_turn_ms=700, end_of_turn_min_ms=300, end_of_turn_max_ms=1500)
    assert p.effective_end_of_turn_ms(None) == 700
    assert p.effective_end_of_turn_ms(0.5) == 700
    assert p.effective_end_of_turn_ms(1.0) == 300
    assert p.effective_end_of_turn_ms(0.0) == 1500
    assert 300 <= p.effective_end_of_turn_ms(0.9) < 700 < p.effective_end_of_turn_ms(0.2) <= 1500


def test_ticks_in_silence_do_nothing() -> None:
    c = Controller("s")
    assert c.handle(Tick(session_id="s", ts_ms=0.0), 20.0) == []
    assert c.phase is Phase.SILENCE
