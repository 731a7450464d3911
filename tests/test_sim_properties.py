"""Timing properties of the whole pipeline, over generated scenarios on the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplexer.policies.controller import PolicyParams
from duplexer.policies.reply import RESUMED_AFTER_COMMIT
from duplexer.runtime.events import CancelReply, CommitReply, PlayoutStopped, ReplyReady, StartReply
from duplexer.sims.metrics import turn_facts, user_turns
from duplexer.sims.scenario import parse_scenario
from duplexer.sims.simulator import SimRun, simulate

FRAME_MS = 20.0
SIM_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

engines = st.fixed_dictionaries(
    {
        "vad": st.fixed_dictionaries(
            {"onset_lag_ms": st.sampled_from([20, 60, 100]), "offset_lag_ms": st.sampled_from([60, 100, 160])}
        ),
        "asr": st.fixed_dictionaries({"final_latency_ms": st.integers(20, 400)}),
        "llm": st.fixed_dictionaries({"ttft_ms": st.integers(30, 1200), "tokens_per_s": st.integers(10, 100)}),
        "tts": st.fixed_dictionaries({"first_chunk_ms": st.integers(20, 300), "rtf": st.sampled_from([0.05, 0.3])}),
        "jitter": st.sampled_from([0.0, 0.2]),
    }
)
policies = st.fixed_dictionaries(
    {
        "pause_ms": st.sampled_from([150, 200, 300]),
        "end_of_turn_ms": st.sampled_from([500, 700, 900]),
        "end_of_turn_min_ms": st.just(300),  # below every end_of_turn_ms drawn; no detector runs here
        "min_barge_in_ms": st.sampled_from([200, 350, 500]),
    }
)


def run(data: dict[str, Any], seed: int = 0) -> SimRun:
    scenario = parse_scenario(data, Path("<generated>"))
    params = PolicyParams(**{k: float(v) for k, v in scenario.policy.items()})
    return simulate(scenario, params, seed)


@SIM_SETTINGS
@given(engines=engines, policy=policies, n_words=st.integers(1, 12), seed=st.integers(0, 3))
def test_a_speculative_reply_ready_in_time_answers_within_end_of_turn_plus_a_frame(
    engines: dict[str, Any], policy: dict[str, float], n_words: int, seed: int
) -> None:
    words = " ".join(["word"] * n_words)
    sim = run({"name": "g", "engines": engines, "policy": policy, "script": [{"say": words}]}, seed)
    committed = [e for e in sim.events if isinstance(e, CommitReply)]
    assert len(committed) == 1
    commit = committed[0]
    speculative = {e.reply_id for e in sim.events if isinstance(e, StartReply) and e.speculative}
    ready = [e for e in sim.events if isinstance(e, ReplyReady) and e.reply_id == commit.reply_id]
    latency = turn_facts(sim).latencies_ms[0]
    if commit.reply_id in speculative and ready and ready[0].ts_ms <= commit.ts_ms:
        assert latency <= policy["end_of_turn_ms"] + FRAME_MS, (latency, policy)
    assert latency >= policy["end_of_turn_ms"] - FRAME_MS  # never answers before the turn could end


@SIM_SETTINGS
@given(engines=engines, policy=policies, gap_ms=st.integers(100, 2500), seed=st.integers(0, 3))
def test_barge_in_stops_the_bot_within_min_barge_in_plus_a_frame(
    engines: dict[str, Any], policy: dict[str, float], gap_ms: int, seed: int
) -> None:
    long_reply = "This is a deliberately long answer that keeps talking for many seconds on end. " * 3
    script = [
        {"say": "tell me everything", "reply": long_reply},
        {
            "say": "stop right there please wait",
            "duration_ms": 1500,
            "start": {"after": "bot_start", "gap_ms": gap_ms},
        },
    ]
    sim = run({"name": "g", "engines": engines, "policy": policy, "script": script}, seed)
    stops = list(turn_facts(sim).barge_in_stops_ms.values())
    limit = max(policy["min_barge_in_ms"], engines["vad"]["onset_lag_ms"]) + FRAME_MS
    taken_back = {e.reply_id for e in sim.events if isinstance(e, CancelReply) and e.reason == RESUMED_AFTER_COMMIT}
    if not stops and taken_back:  # speech just after the commit: the reply stopped at once, never overlapping
        onset = user_turns(sim)[0][-1].start_ms
        assert all(
            a.end_ms <= onset + engines["vad"]["onset_lag_ms"] + FRAME_MS
            for a in sim.bot_audio
            if a.reply_id in taken_back
        )
        return
    assert len(stops) == 1, "the interruption did not stop the bot"
    assert stops[0] <= limit, (stops[0], limit)


@SIM_SETTINGS
@given(engines=engines, policy=policies, seed=st.integers(0, 3))
def test_short_backchannels_never_stop_the_bot(engines: dict[str, Any], policy: dict[str, float], seed: int) -> None:
    # Short enough that its speech plus the VAD's offset lag ends before min_barge_in_ms.
    duration = policy["min_barge_in_ms"] - engines["vad"]["offset_lag_ms"] - 2 * FRAME_MS
    if duration <= FRAME_MS:
        duration = FRAME_MS
        policy = {**policy, "min_barge_in_ms": engines["vad"]["offset_lag_ms"] + 4 * FRAME_MS}
    script = [
        {
            "say": "explain it slowly",
            "reply": "Here is a fairly long explanation that goes on for a while, " * 2,
        },
        {"backchannel": "mm-hmm", "duration_ms": duration, "start": {"after": "bot_start", "gap_ms": 800}},
    ]
    sim = run({"name": "g", "engines": engines, "policy": policy, "script": script}, seed)
    assert not [e for e in sim.events if isinstance(e, PlayoutStopped)]
    assert turn_facts(sim).backchannels == 1


@SIM_SETTINGS
@given(
    engines=engines,
    policy=policies,
    pauses=st.lists(st.integers(100, 1300), min_size=0, max_size=3),
    seed=st.integers(0, 3),
)
def test_every_speculative_reply_ends_committed_or_cancelled(
    engines: dict[str, Any], policy: dict[str, float], pauses: list[int], seed: int
) -> None:
    say = {
        "say": "one two three four five six seven eight",
        "pauses": [{"after_word": i + 2, "ms": ms} for i, ms in enumerate(pauses)],
    }
    sim = run({"name": "g", "engines": engines, "policy": policy, "script": [say, {"say": "and then"}]}, seed)
    speculative = {e.reply_id for e in sim.events if isinstance(e, StartReply) and e.speculative}
    ended = {e.reply_id for e in sim.events if isinstance(e, (CommitReply, CancelReply))}
    assert speculative <= ended
    taken_back = {e.reply_id for e in sim.events if isinstance(e, CancelReply) and e.reason == RESUMED_AFTER_COMMIT}
    per_turn: dict[int | None, int] = {}
    for e in sim.events:
        if isinstance(e, CommitReply) and e.reply_id not in taken_back:  # a taken-back commit is undone
            per_turn[e.turn_id] = per_turn.get(e.turn_id, 0) + 1
    assert all(n == 1 for n in per_turn.values())


def test_replays_are_deterministic_for_a_seed() -> None:
    data = {"name": "g", "engines": {"jitter": 0.3}, "script": [{"say": "hello there"}, {"say": "and more"}]}
    first, second = run(data, seed=5), run(data, seed=5)
    assert [(type(e), e.ts_ms) for e in first.events] == [(type(e), e.ts_ms) for e in second.events]
    assert [(i.start_ms, i.end_ms) for i in first.bot_audio] == [(i.start_ms, i.end_ms) for i in second.bot_audio]
