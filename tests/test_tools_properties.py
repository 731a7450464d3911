"""Safety of tool calls over generated conversations: interruptions, speculation, slow and failing tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplexer.policies.controller import PolicyParams
from duplexer.runtime.events import (
    CancelReply,
    LlmDone,
    PlayoutDone,
    ToolCallRequested,
    ToolCallStarted,
    ToolResult,
)
from duplexer.sims.scenario import parse_scenario
from duplexer.sims.simulator import SimRun, policy_for, simulate

SIM_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PREFACES = ["Let me check.", "One moment while I look that up for you.", "Sure, I can do that right away, hold on"]

tool_turns = st.fixed_dictionaries(
    {
        "say": st.sampled_from(["what is the weather", "please hang up the call", "send it to bob"]),
        "pauses": st.sampled_from([[], [{"after_word": 2, "ms": 450}]]),
        "reply": st.fixed_dictionaries(
            {
                "preface": st.sampled_from(PREFACES),
                "call": st.fixed_dictionaries(
                    {
                        "name": st.just("act"),
                        "args": st.just({"x": 1}),
                        "format": st.sampled_from(["step_audio", "openai"]),
                    }
                ),
                "tool": st.fixed_dictionaries(
                    {
                        "side_effect": st.booleans(),
                        "latency_ms": st.integers(0, 4000),
                        "timeout_ms": st.integers(500, 5000),
                    }
                ),
                "then": st.sampled_from(["", "Done, that worked out fine."]),
            }
        ),
    }
)
interruptions = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "say": st.just("wait stop one more thing"),
            "start": st.builds(lambda g: {"after": "bot_start", "gap_ms": g}, st.integers(0, 5000)),
        }
    ),
    st.fixed_dictionaries(
        {
            "backchannel": st.just("mm-hmm"),
            "start": st.builds(lambda g: {"after": "bot_start", "gap_ms": g}, st.integers(0, 3000)),
        }
    ),
)
engines = st.fixed_dictionaries(
    {
        "llm": st.fixed_dictionaries({"ttft_ms": st.integers(30, 600), "tokens_per_s": st.integers(20, 120)}),
        "jitter": st.sampled_from([0.0, 0.2]),
    }
)


def run(turn: dict[str, Any], interruption: dict[str, Any] | None, engine_models: dict[str, Any], seed: int) -> SimRun:
    script = [turn] if interruption is None else [turn, interruption]
    scenario = parse_scenario({"name": "g", "engines": engine_models, "script": script, "tail_ms": 15_000}, Path("g"))
    return simulate(scenario, policy_for(scenario, PolicyParams(), "g"), seed)


@SIM_SETTINGS
@given(turn=tool_turns, interruption=interruptions, engine_models=engines, seed=st.integers(0, 3))
def test_every_call_ends_once_and_side_effects_run_only_after_their_reply_was_heard_uninterrupted(
    turn: dict[str, Any], interruption: dict[str, Any] | None, engine_models: dict[str, Any], seed: int
) -> None:
    sim = run(turn, interruption, engine_models, seed)
    requested = [e.call_id for e in sim.events if isinstance(e, ToolCallRequested)]
    results = [e.call_id for e in sim.events if isinstance(e, ToolResult)]
    assert sorted(results) == sorted(requested), "a call was left in progress, or answered twice"

    cancelled_at = {e.reply_id: e.ts_ms for e in sim.events if isinstance(e, CancelReply)}
    played_at = {e.reply_id: e.ts_ms for e in sim.events if isinstance(e, PlayoutDone)}
    for start in (e for e in sim.events if isinstance(e, ToolCallStarted)):
        if start.read_only:
            assert start.ts_ms <= cancelled_at.get(start.reply_id, float("inf"))
        else:
            assert start.reply_id not in cancelled_at, "a side effect ran for a cancelled reply"
            assert start.ts_ms >= played_at[start.reply_id], "a side effect ran before its reply was heard"
    assert len(sim.tools_ran) == sum(isinstance(e, ToolCallStarted) for e in sim.events)

    for done in (e for e in sim.events if isinstance(e, LlmDone)):
        assert done.ts_ms <= cancelled_at.get(done.reply_id, float("inf")), "a dead reply went on talking"
