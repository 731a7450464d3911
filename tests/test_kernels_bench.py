"""Specification of `duplexer bench kernels` (argument handling and one tiny run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplexer.bench.kernels import main


def test_help_explains_the_options_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for option in ("--sessions", "--seconds", "--chunk-ms", "--no-torch", "--log"):
        assert option in out


@pytest.mark.parametrize("argv", [["--sessions", "0"], ["--bogus"], ["--seconds", "x"], ["--chunk-ms", "100"]])
def test_bad_options_exit_with_status_two(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


def test_a_tiny_run_prints_all_figures_and_appends_them_with_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "bench.md"
    argv = ["--sessions", "3", "--seconds", "0.5", "--repeats", "1", "--embed-dim", "4"]
    assert main([*argv, "--log", str(log)]) == 0
    out = capsys.readouterr().out
    for label in ("NumPy reference", "numba, per session", "numba batched", "fused", "first call"):
        assert label in out
    written = log.read_text()
    assert "duplexer bench kernels --sessions 3" in written
    assert "AQAA demux" in written
