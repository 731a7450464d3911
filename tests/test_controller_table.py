"""The transition table is data: every (state, event) pair is declared, and the rest is an error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.policies.controller import (
    CONTROLLER_INPUTS,
    DEFAULT_PRESET,
    LIVE_CALL_POLICY,
    POLICY_PRESETS,
    TIMERS,
    TRANSITIONS,
    Controller,
    ControllerError,
    Phase,
    PolicyParams,
    Rule,
    UndeclaredTarget,
    UndeclaredTransition,
    preset,
    rule_for,
)
from duplexer.policies.render import render
from duplexer.runtime.events import (
    AsrFinal,
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    ErrorEvent,
    HistoryUpdated,
    PlayoutDone,
    StartReply,
    StateChanged,
    StopPlayout,
    Tick,
    VadSpeechStart,
    VadSpeechStop,
)


def test_every_state_event_pair_is_declared() -> None:
    assert set(TRANSITIONS) == set(Phase)
    for phase in Phase:
        declared = set(TRANSITIONS[phase])
        assert declared == set(CONTROLLER_INPUTS), f"{phase}: missing {set(CONTROLLER_INPUTS) - declared}"
        for kind in CONTROLLER_INPUTS:
            rule = rule_for(phase, kind)
            if rule.ignored:
                assert rule.targets == (), f"{phase} x {kind.__name__} is ignored yet declares targets"
            else:
                assert callable(rule.handler), f"{phase} x {kind.__name__} names no callable handler"
                assert phase not in rule.targets, f"{phase} x {kind.__name__} lists its own phase as a target"
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
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.startswith("  ") and line.split()}
    assert rows["parameter"] == list(POLICY_PRESETS)  # a column per preset, side by side
    for name in PolicyParams.field_names():
        assert rows[name] == [str(getattr(p, name)) for p in POLICY_PRESETS.values()]


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
    p = PolicyParams(end_of_turn_ms=700, end_of_turn_min_ms=300, end_of_turn_unsure_ms=700, end_of_turn_max_ms=1500)
    assert p.effective_end_of_turn_ms(None) == 700
    assert p.effective_end_of_turn_ms(0.5) == 700
    assert p.effective_end_of_turn_ms(1.0) == 300
    assert p.effective_end_of_turn_ms(0.0) == 1500
    assert 300 <= p.effective_end_of_turn_ms(0.9) < 700 < p.effective_end_of_turn_ms(0.2) <= 1500


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_the_wait_falls_as_the_detector_grows_surer_and_stays_within_bounds(p: float, q: float) -> None:
    """Unsure above max is capped: no probability asks for more than max or less than min."""
    params = PolicyParams(end_of_turn_min_ms=400, end_of_turn_unsure_ms=3000, end_of_turn_max_ms=2000)
    low, high = sorted((p, q))
    assert 400 <= params.effective_end_of_turn_ms(high) <= params.effective_end_of_turn_ms(low) <= 2000


def test_ticks_in_silence_do_nothing() -> None:
    c = Controller("s")
    assert c.handle(Tick(session_id="s", ts_ms=0.0), 20.0) == []
    assert c.phase is Phase.SILENCE


def _paused_with_a_speculative_reply(strict: bool = True) -> tuple[Controller, str]:
    c = Controller("s", PolicyParams(), strict=strict)
    c.handle(VadSpeechStart(session_id="s", ts_ms=0.0, segment_id=1, probability=0.9, speech_start_ms=0.0), 0.0)
    c.handle(VadSpeechStop(session_id="s", ts_ms=400.0, segment_id=1, probability=0.1, speech_end_ms=400.0), 400.0)
    c.handle(AsrFinal(session_id="s", ts_ms=450.0, segment_id=1, text="what time is it"), 450.0)
    actions = c.handle(Tick(session_id="s", ts_ms=600.0), 600.0)
    assert c.phase is Phase.USER_PAUSED
    return c, next(a.reply_id for a in actions if isinstance(a, StartReply))


def test_a_rule_that_moves_to_an_undeclared_target_raises_naming_phase_event_and_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c, _ = _paused_with_a_speculative_reply()
    rogue = Rule(lambda step, ev: step.goto(Phase.SILENCE, "rogue"), (), "moves without declaring it")
    monkeypatch.setitem(TRANSITIONS[Phase.USER_PAUSED], EndOfTurnProbability, rogue)
    with pytest.raises(UndeclaredTarget, match=r"EndOfTurnProbability in state UserPaused moved to Silence"):
        c.handle(EndOfTurnProbability(session_id="s", ts_ms=700.0, probability=0.5), 700.0)


def test_playout_done_of_the_speculative_reply_while_paused_cancels_it_and_the_turn_goes_on() -> None:
    """No playout sends it today; the rule for the pair keeps the table's promise (no undeclared move)."""
    c, reply_id = _paused_with_a_speculative_reply()
    actions = c.handle(PlayoutDone(session_id="s", ts_ms=650.0, reply_id=reply_id, played_ms=300.0), 650.0)
    assert c.phase is Phase.USER_PAUSED
    assert [(type(a), getattr(a, "reply_id", None)) for a in actions] == [(CancelReply, reply_id)]
    actions = c.handle(Tick(session_id="s", ts_ms=2000.0), 2000.0)  # end of turn: a fresh reply, committed
    fresh = next(a for a in actions if isinstance(a, CommitReply))
    assert fresh.reply_id != reply_id and c.phase is Phase.BOT_REPLYING


def test_a_live_controller_turns_a_violation_into_an_error_and_a_safe_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    c, reply_id = _paused_with_a_speculative_reply(strict=False)
    rogue = Rule(lambda step, ev: step.goto(Phase.BOT_REPLYING, "rogue"), (), "moves without declaring it")
    monkeypatch.setitem(TRANSITIONS[Phase.USER_PAUSED], EndOfTurnProbability, rogue)
    actions = c.handle(EndOfTurnProbability(session_id="s", ts_ms=700.0, probability=0.5), 700.0)
    assert c.phase is Phase.SILENCE and c.state.reply is None
    kinds = [type(a) for a in actions]
    assert kinds[0] is ErrorEvent and "moved to BotReplying" in actions[0].message  # type: ignore[attr-defined]
    assert {StopPlayout, CancelReply, StateChanged} <= set(kinds)
    assert all(getattr(a, "reply_id", reply_id) == reply_id for a in actions)
    assert c.next_deadline_ms() is None  # nothing left timed: the session waits for the user


def test_every_timed_phase_ticks_and_every_ticking_phase_is_timed() -> None:
    for phase in Phase:
        ticks = not rule_for(phase, Tick).ignored
        assert ticks == bool(TIMERS.get(phase)), phase


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pause_ms": True}, "pause_ms must be a number"),
        ({"speculation": 1}, "speculation must be true or false"),
        ({"pause_ms": float("nan")}, "pause_ms must be finite"),
        ({"end_of_turn_ms": float("inf")}, "end_of_turn_ms must be finite"),
        ({"max_speculative_calls": 2.5}, "max_speculative_calls must be an integer"),
        ({"pause_ms": "fast"}, "pause_ms must be a number"),
        ({"pause_speed": 1.0}, "unknown policy parameter 'pause_speed'"),
        ({"pause_ms": 900.0}, "pause_ms"),
    ],
)
def test_overrides_are_refused_in_one_line_naming_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        PolicyParams().with_overrides(overrides)
    assert "\n" not in str(refused.value)


def test_overrides_apply_and_keep_the_rest() -> None:
    params = LIVE_CALL_POLICY.with_overrides({"pause_ms": 120, "max_speculative_calls": 2.0, "speculation": False})
    assert (params.pause_ms, params.max_speculative_calls, params.speculation) == (120, 2, False)
    assert isinstance(params.max_speculative_calls, int)
    assert params.resume_after_ms == LIVE_CALL_POLICY.resume_after_ms


def test_one_default_policy_the_live_one_and_the_first_defaults_kept_by_name() -> None:
    assert preset(DEFAULT_PRESET) is LIVE_CALL_POLICY == PolicyParams()
    assert preset("default") is preset(DEFAULT_PRESET) is POLICY_PRESETS["live"]
    assert LIVE_CALL_POLICY.backchannel_pause_playout and LIVE_CALL_POLICY.resume_after_ms == 400.0
    classic = preset("classic")
    assert (classic.pause_ms, classic.end_of_turn_min_ms, classic.backchannel_pause_playout) == (200.0, 300.0, False)
    assert classic.resume_after_ms == 0.0
    assert preset("fast").end_of_turn_min_ms < LIVE_CALL_POLICY.end_of_turn_min_ms
    with pytest.raises(ValueError, match="unknown policy preset 'brisk' \\(known: live, fast, classic, default\\)"):
        preset("brisk")


def test_the_policy_decides_whether_tts_renders_a_speculative_reply_before_its_commit() -> None:
    for speculative_tts in (True, False):
        c = Controller("s", PolicyParams(speculative_tts=speculative_tts, max_speculative_calls=1))
        c.handle(VadSpeechStart(session_id="s", ts_ms=0.0, segment_id=1, probability=0.9, speech_start_ms=0.0), 0.0)
        c.handle(VadSpeechStop(session_id="s", ts_ms=400.0, segment_id=1, probability=0.1, speech_end_ms=400.0), 400.0)
        c.handle(AsrFinal(session_id="s", ts_ms=450.0, segment_id=1, text="hi"), 450.0)
        spec = [a for a in c.handle(Tick(session_id="s", ts_ms=600.0), 600.0) if isinstance(a, StartReply)]
        assert [(a.speculative, a.prerender) for a in spec] == [(True, speculative_tts)]
        c.handle(AsrFinal(session_id="s", ts_ms=700.0, segment_id=1, text="hi there"), 700.0)  # no longer matches
        fresh = [a for a in c.handle(Tick(session_id="s", ts_ms=3000.0), 3000.0) if isinstance(a, StartReply)]
        assert [(a.speculative, a.prerender) for a in fresh] == [(False, True)]


def _rogue_speech_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """UserSpeaking x VadSpeechStop moves to BotReplying, which its row does not declare."""
    rogue = Rule(lambda step, ev: step.goto(Phase.BOT_REPLYING, "rogue"), (), "moves without declaring it")
    monkeypatch.setitem(TRANSITIONS[Phase.USER_SPEAKING], VadSpeechStop, rogue)


def test_the_simulator_raises_a_rule_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplexer.sims.scenario import load_scenario
    from duplexer.sims.simulator import simulate
    from tests.conftest import SCENARIOS

    _rogue_speech_stop(monkeypatch)
    scenario = load_scenario(SCENARIOS / "plain_single_turn.yaml")
    with pytest.raises(UndeclaredTarget, match="VadSpeechStop in state UserSpeaking moved to BotReplying"):
        simulate(scenario, PolicyParams())


def test_the_simulator_raises_a_violation_it_only_hears_of_on_the_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    """As under Ray, where the controller runs on a host and the driver holds no controller actor."""
    from duplexer.sims import simulator
    from duplexer.sims.scenario import load_scenario
    from tests.conftest import SCENARIOS

    real_start = simulator.start_pipeline

    def start_remote_controller(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {name: actor for name, actor in real_start(*args, **kwargs).items() if name != "controller"}

    _rogue_speech_stop(monkeypatch)
    monkeypatch.setattr(simulator, "start_pipeline", start_remote_controller)
    scenario = load_scenario(SCENARIOS / "plain_single_turn.yaml")
    moved = r"rule violation: .*VadSpeechStop in state UserSpeaking moved to BotReplying"
    with pytest.raises(ControllerError, match=moved):
        simulator.simulate(scenario, PolicyParams())


def test_a_live_controller_actor_reports_a_violation_and_resets_without_crashing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from duplexer.actors.controller import ControllerActor
    from duplexer.runtime.clock import LoopClock, run_virtual
    from duplexer.runtime.events import Event
    from duplexer.runtime.session import Session

    _rogue_speech_stop(monkeypatch)

    async def scenario() -> tuple[list[Event], ControllerActor, float]:
        clock = LoopClock()
        async with Session("s", clock=clock) as session:
            seen = session.bus.subscribe("test", (ErrorEvent, StateChanged), maxsize=1000)
            actor = ControllerActor(session.ctx)
            session.add(actor)
            session.ctx.emit(VadSpeechStart, segment_id=1, probability=0.9, speech_start_ms=0.0)
            await clock.sleep_ms(300.0)
            session.ctx.emit(VadSpeechStop, segment_id=1, probability=0.1, speech_end_ms=300.0)
            await clock.sleep_ms(100.0)
            crashes = session.metrics.count("actor.crash", actor="controller")
            events = []
            while (event := seen.get_nowait()) is not None:
                events.append(event)
        return events, actor, crashes

    events, actor, crashes = run_virtual(scenario())  # type: ignore[misc]
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].source == "controller" and "moved to BotReplying" in errors[0].message
    assert actor.controller.phase is Phase.SILENCE and actor.violation is None and crashes == 0.0
    assert isinstance(events[-1], StateChanged) and events[-1].new_state == Phase.SILENCE.value
