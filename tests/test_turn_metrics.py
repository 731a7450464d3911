"""The one turn-taking scorer: its definitions on hand-made timelines, and properties over generated ones."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from duplexer.sims.metrics import turn_facts
from duplexer.sims.scenario import load_scenario
from duplexer.sims.simulator import simulate
from duplexer.sims.turn_metrics import (
    BOT_MERGE_GAP_MS,
    Speech,
    UserTurn,
    Word,
    is_takeover,
    merge_gaps,
    score_turns,
    summarize_turns,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SPEECH = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "vap_phrases"
    / "audio"
    / "basketball_short_female_en-US-Wavenet-E.wav"
)


def test_latency_is_from_the_end_of_the_turn_to_the_next_bot_onset() -> None:
    turn = UserTurn(((0.0, 1000.0), (1400.0, 2000.0)))
    scored = score_turns([turn], [Speech(2650.0, 4000.0)]).turns[0]
    assert scored.response_latency_ms == 650.0
    assert scored.talk_over_count == 0 and not scored.pause_taken_over
    assert scored.takeover


def test_bot_speech_that_starts_in_a_pause_and_runs_into_the_resumed_turn_is_talk_over() -> None:
    turn = UserTurn(((0.0, 1000.0), (1700.0, 2500.0)))
    # The bot starts 660 ms into the pause and is stopped 300 ms after the user resumed.
    scored = score_turns([turn], [Speech(1660.0, 2000.0, stopped=True), Speech(3100.0, 4000.0)]).turns[0]
    assert scored.talk_over_count == 1
    assert scored.talk_over_ms == 340.0
    assert scored.pause_taken_over
    assert scored.response_latency_ms == 600.0
    summary = summarize_turns([scored])
    assert summary["talk_over"] == {"count": 1, "turns": 1, "total_ms": 340.0}
    assert summary["pause_takeover_rate"] == 1.0


def test_barge_in_stop_is_the_overlap_after_the_user_comes_in_and_not_talk_over() -> None:
    turns = [UserTurn(((0.0, 800.0),)), UserTurn(((2000.0, 3000.0),))]
    scored = score_turns(turns, [Speech(1500.0, 2300.0, stopped=True), Speech(3700.0, 4500.0)]).turns
    assert scored[1].bot_speaking_at_onset
    assert scored[1].barge_in_stop_ms == 300.0
    assert scored[1].talk_over_count == 0
    assert scored[1].response_latency_ms == 700.0


def test_bot_gaps_up_to_half_a_second_are_one_stretch() -> None:
    turns = [UserTurn(((1000.0, 2000.0),))]
    bot = [Speech(0.0, 1200.0), Speech(1200.0 + BOT_MERGE_GAP_MS, 2600.0, stopped=True)]
    assert score_turns(turns, bot).turns[0].barge_in_stop_ms == 1600.0


def test_a_backchannel_that_the_bot_stops_on_is_a_false_stop_and_one_it_talks_through_is_not() -> None:
    backchannel = UserTurn(((1000.0, 1300.0),), kind="backchannel")
    stopped = score_turns([backchannel], [Speech(0.0, 1500.0, stopped=True)]).turns[0]
    through = score_turns([backchannel], [Speech(0.0, 5000.0)]).turns[0]
    assert stopped.backchannel_stopped_bot is True
    assert through.backchannel_stopped_bot is False
    assert summarize_turns([stopped, through])["backchannel_false_stop_rate"] == 0.5


def test_takeover_follows_full_duplex_bench_one_second_or_more_than_three_words() -> None:
    def words(*starts: float) -> tuple[Word, ...]:
        return tuple(Word("w", s, s + 100.0) for s in starts)

    assert is_takeover([Speech(0, 1200, words(0, 1100))], 0, 5000)  # spans 1.2 s
    assert is_takeover([Speech(0, 800, words(0, 200, 400, 600))], 0, 5000)  # four words in 0.7 s
    assert not is_takeover([Speech(0, 700, words(0, 200, 500))], 0, 5000)  # three words in 0.6 s
    assert not is_takeover([Speech(0, 900)], 0, 5000)  # no words: judged by its 0.9 s of speech
    assert is_takeover([Speech(0, 1000)], 0, 5000)


spans = st.lists(st.tuples(st.floats(0, 10_000), st.floats(1, 2_000)), max_size=12).map(
    lambda xs: [(s, s + d) for s, d in xs]
)


@given(spans, st.floats(0, 1000))
def test_merging_leaves_no_gap_at_or_under_the_limit_and_covers_every_span(
    raw: list[tuple[float, float]], gap_ms: float
) -> None:
    merged = merge_gaps(raw, gap_ms)
    assert all(b[0] - a[1] > gap_ms for a, b in itertools.pairwise(merged))
    assert all(any(m[0] <= s and e <= m[1] for m in merged) for s, e in raw)
    assert merge_gaps(merged, gap_ms) == merged


@given(spans, spans)
def test_talk_over_never_exceeds_the_turn_and_latency_is_never_negative(
    user: list[tuple[float, float]], bot: list[tuple[float, float]]
) -> None:
    turns = [UserTurn((span,)) for span in merge_gaps(user, 0.0)]
    for scored in score_turns(turns, [Speech(s, e) for s, e in bot]).turns:
        assert 0.0 <= scored.talk_over_ms <= scored.end_ms - scored.start_ms + 1e-6
        assert scored.response_latency_ms is None or scored.response_latency_ms >= 0.0
        assert scored.pause_taken_over is False  # one segment per turn: no pauses


def test_an_end_of_turn_timer_firing_just_after_the_user_resumes_is_talk_over_that_live_no_longer_makes() -> None:
    from duplexer.policies.params import CLASSIC_POLICY, LIVE_CALL_POLICY

    scenario = load_scenario(SCENARIOS / "end_of_turn_just_after_resume.yaml")
    classic = turn_facts(simulate(scenario, CLASSIC_POLICY, 0))  # commits inside the VAD's onset lag
    (turn,) = classic.turns
    assert turn.pauses == 1
    assert turn.talk_over_count >= 1 and turn.talk_over_ms > 0.0
    assert turn.pause_taken_over and classic.pause_takeovers == 1
    live = turn_facts(simulate(scenario, LIVE_CALL_POLICY, 0))  # holds the commit on the onset candidate
    (turn,) = live.turns
    assert turn.talk_over_count == 0 and not turn.pause_taken_over


def test_the_demo_reports_latency_from_the_audible_onset_and_the_first_chunk_beside_it() -> None:
    import numpy as np

    from duplexer.policies.controller import PolicyParams
    from duplexer.protocols.wav import read_wav
    from duplexer.runtime.events import CommitReply, PlayoutStarted
    from duplexer.sims.demo import turn_records
    from duplexer.sims.live import LiveRun
    from duplexer.sims.simulator import BotInterval, SimRun, StepRecord

    rate = 16_000
    speech = np.frombuffer(read_wav(SPEECH, rate), dtype="<i2")
    bot = np.zeros(3 * rate, dtype=np.int16)
    onset = int(1.85 * rate) + int(np.argmax(np.abs(speech) >= 328))  # the first sample at -40 dBFS
    bot[int(1.85 * rate) : int(2.6 * rate)] = speech[: int(0.75 * rate)]  # a chunk at 1.6 s, 250 ms silent
    step = StepRecord(0, "say", "hello there", 200.0, 1000.0, [(200.0, 1000.0)])
    events = [
        CommitReply(session_id="s", turn_id=1, ts_ms=1500.0, reply_id="t1r1", user_text="hello there"),
        PlayoutStarted(session_id="s", turn_id=1, ts_ms=1600.0, reply_id="t1r1"),
    ]
    run = SimRun("s", True, PolicyParams(), [step], [BotInterval("t1r1", 1600.0, 2600.0)], events, 3000.0, 0.0)
    live = LiveRun(run, np.zeros(3 * rate, dtype=np.int16), bot, [])
    (record,) = turn_records(live, None)
    assert record["engine_first_chunk_ms"] == 600.0
    assert abs(record["response_latency_ms"] - (1000.0 * onset / rate - 1000.0)) <= 1.0
