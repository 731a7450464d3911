"""`duplexer bench webrtc`: argument handling, and a quick concurrent-sessions run that writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplexer.protocols.webrtc_bench import main, pace_lag_ms, session_levels


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


@pytest.mark.slow
def test_a_two_session_search_runs_and_nothing_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default log, docs/benchmarks.md, would land here
    assert main(["--sessions", "2", "--session-trials", "2", "--no-log"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | " in out and "largest N sustained: " in out  # a level-1 hole can end the search early
    assert not (tmp_path / "docs").exists()
