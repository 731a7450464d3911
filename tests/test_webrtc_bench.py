"""`duplexer bench webrtc`: argument handling, the barge-in figures it measures, and a quick concurrent-sessions
run that writes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from duplexer.bench.webrtc import bench, main, synthetic_speech
from duplexer.bench.webrtc_sessions import pace_lag_ms, session_levels
from duplexer.runtime.events import FRAME_MS


@pytest.mark.parametrize(
    "argv",
    [["--sessions", "0"], ["--sessions", "two"], ["--max-sessions", "0"], ["--session-trials", "0"], ["--bogus"]],
)
def test_bad_options_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        code = main(argv)
        raise SystemExit(code)
    assert raised.value.code == 2


def test_levels_double_up_to_the_target() -> None:
    assert session_levels(1) == [1]
    assert session_levels(8) == [1, 2, 4, 8]
    assert session_levels(6) == [1, 2, 4, 6]


def test_pace_lag_sees_a_stall_but_not_steady_arrival() -> None:
    steady = [0.02 * k for k in range(200)]
    assert pace_lag_ms(steady) < 1e-6
    stalled = [t + (0.3 if k >= 100 else 0.0) for k, t in enumerate(steady)]
    assert pace_lag_ms(stalled) == pytest.approx(300.0)


def test_barge_in_over_webrtc_stops_the_bot_within_two_frames_of_the_in_process_figure() -> None:
    in_process, at_server, at_caller = asyncio.run(
        asyncio.wait_for(bench(3, synthetic_speech(1500.0), synthetic_speech(1000.0, seed=1)), 90.0)
    )
    local = sorted(t.stop_latency_ms for t in in_process.trials)[1]
    remote = sorted(t.stop_latency_ms for t in at_server.trials)[1]
    assert len(at_server.trials) == 3 and len(at_caller.trials) == 3
    assert 0 < local < 200
    assert abs(remote - local) <= 2 * FRAME_MS
    # the caller hears the bot stop too, after Opus and two jitter buffers
    assert all(0 < t.stop_latency_ms < 600 for t in at_caller.trials)


@pytest.mark.slow
def test_a_two_session_search_runs_and_nothing_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder either
    assert main(["--sessions", "2", "--session-trials", "2", "--no-log"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | " in out and "largest N sustained: " in out  # a level-1 hole can end the search early
    assert not (tmp_path / "docs").exists()
