"""The executor benchmark's pure helpers and its command line; no Ray, nothing timed."""

from __future__ import annotations

import math

import pytest

from duplexer.bench.executor_hops import HopProbe, HopProbeControl
from duplexer.bench.executor_levels import (
    Reference,
    judge_level,
    largest_sustained,
    percentile,
    ramp_levels,
    ratio_verdict,
    split_pace,
)
from duplexer.bench.executors import main
from duplexer.runtime.events import Priority

REFERENCE = Reference({"answered": 3, "errors": 0}, 700.0)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_ramp_levels_stop_at_the_cap() -> None:
    assert ramp_levels(1) == [1]
    assert ramp_levels(4) == [1, 2, 4]
    assert ramp_levels(20) == [1, 2, 4, 8, 12, 16, 20]
    with pytest.raises(ValueError):
        ramp_levels(0)


def test_a_level_matching_the_reference_in_time_is_sustained() -> None:
    outcomes = [{"answered": 3, "errors": 0}] * 4
    assert judge_level(outcomes, REFERENCE, [710.0, 720.0, 790.0], [0.5, 2.0, 19.0]) == []


def test_a_session_that_behaves_differently_fails_the_level() -> None:
    outcomes = [{"answered": 3, "errors": 0}, {"answered": 2, "errors": 1}]
    reasons = judge_level(outcomes, REFERENCE, [710.0], [1.0])
    assert len(reasons) == 1
    assert "1 of 2 session(s) differ" in reasons[0]
    assert "answered 2 vs 3" in reasons[0] and "errors 1 vs 0" in reasons[0]


def test_an_incomplete_session_fails_the_level() -> None:
    reasons = judge_level([{"answered": 3, "errors": 0}, None], REFERENCE, [710.0], [1.0])
    assert reasons == ["1 of 2 session(s) did not complete"]


def test_late_frames_fail_the_level() -> None:
    lags = [1.0] * 98 + [60.0, 80.0]
    reasons = judge_level([{"answered": 3, "errors": 0}], REFERENCE, [710.0], lags)
    assert len(reasons) == 1 and reasons[0].startswith("frame pacing lag p99")


def test_slow_responses_fail_the_level() -> None:
    reasons = judge_level([{"answered": 3, "errors": 0}], REFERENCE, [790.0, 810.0, 820.0], [1.0])
    assert len(reasons) == 1 and reasons[0].startswith("response p50 810 ms")
    assert judge_level([{"answered": 3, "errors": 0}], REFERENCE, [790.0, 810.0, 820.0], [1.0], slack_ms=150) == []


def test_no_figures_is_not_sustained() -> None:
    assert judge_level([], REFERENCE, [], []) == ["no session ran"]
    reasons = judge_level([{"answered": 3, "errors": 0}], REFERENCE, [], [])
    assert len(reasons) == 2


def test_split_pace_separates_setup_from_steady_state() -> None:
    frames = [[(0.0, 150.0), (1.0, 1.0), (2.0, 2.0)], [(0.5, 90.0), (1.5, 3.0)]]
    setup, steady = split_pace(frames, [0.2, 0.9])
    assert setup == [150.0, 90.0]
    assert steady == [1.0, 2.0, 3.0]
    _, everything = split_pace(frames, [math.nan])
    assert len(everything) == 5


def test_largest_sustained_stops_at_the_first_failure() -> None:
    assert largest_sustained([(1, True), (2, True), (4, False)]) == 2
    assert largest_sustained([(4, True), (1, True), (2, False)]) == 1
    assert largest_sustained([(1, False)]) == 0
    assert largest_sustained([]) == 0


def test_ratio_verdicts_say_missed() -> None:
    assert ratio_verdict(1.1, 1.3, at_most=True).startswith("met")
    assert ratio_verdict(1.6, 1.3, at_most=True).startswith("MISSED")
    assert ratio_verdict(0.25, 0.5, at_most=False).startswith("MISSED")
    assert ratio_verdict(math.nan, 0.5, at_most=False) == "not measured"


def test_probe_events_are_frozen_and_on_their_lanes() -> None:
    probe = HopProbe(session_id="s", ts_ms=1.0, seq=3)
    with pytest.raises(AttributeError):
        probe.seq = 4  # type: ignore[misc]
    assert probe.priority is Priority.DATA
    assert HopProbeControl(session_id="s", ts_ms=1.0, seq=3).priority is Priority.CONTROL


def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "duplexer bench executors" in out and "--quick" in out


def test_bad_options_are_refused_before_ray_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cap", "0", "--no-log"]) == 2
    assert "--cap" in capsys.readouterr().err
