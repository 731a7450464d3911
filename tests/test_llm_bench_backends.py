"""`duplexer bench llm`: its options, and a quick real run against llama.cpp in process and its HTTP server."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplexer.bench.llm import build_parser, main
from duplexer.cli import BENCHMARKS


def test_registered_as_bench_llm() -> None:
    assert BENCHMARKS["llm"][:2] == ("duplexer.bench.llm", "main")


def test_defaults_are_sane() -> None:
    args = build_parser().parse_args([])
    assert args.requests >= 1 and args.cancels >= 1 and args.threads >= 1 and args.warmup >= 0


@pytest.mark.parametrize(
    "argv",
    [["--bogus"], ["--requests", "0"], ["--cancels", "x"], ["--warmup", "-1"], ["--server-start-timeout", "0"]],
)
def test_bad_options_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


@pytest.mark.slow
def test_quick_run_appends_a_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "bench.md"
    argv = ["--requests", "2", "--warmup", "1", "--max-tokens", "12", "--cancels", "2", "--log", str(log)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "time to first token" in printed and "decode rate" in printed
    text = log.read_text()
    assert "## LLM backends: in-process llama.cpp vs its HTTP server" in text
    assert "`duplexer bench llm --requests 2" in text
    assert "cancel: lock free / server logs disconnect (p50)" in text
    ttft_row = next(line for line in text.splitlines() if line.startswith("| time to first token"))
    assert " ms |" in ttft_row and "| - |" not in ttft_row
