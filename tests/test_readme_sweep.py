"""The README's sweep runs as printed and shows a trade-off: latency and pause takeover both move."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import pytest

from duplexer.cli import main

ROOT = Path(__file__).resolve().parent.parent


def readme_sweep() -> list[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"`duplexer (sim [^`]*--sweep[^`]*)`", text)
    assert match, "the README shows a sweep"
    return shlex.split(match.group(1))


@pytest.mark.slow
def test_the_readme_sweep_varies_both_latency_and_pause_takeover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [tmp_path.as_posix() if a == "DIR" else a for a in readme_sweep()]
    monkeypatch.chdir(ROOT)
    assert main([*args, "--quiet"]) == 0
    with (tmp_path / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 12
    latencies = {float(r["response_latency_p50_ms"]) for r in rows}
    takeovers = {float(r["pause_takeover_rate"]) for r in rows}
    assert max(latencies) - min(latencies) >= 200.0, latencies
    assert len(takeovers) >= 3 and max(takeovers) > min(takeovers), takeovers
    # The lowest latency costs takeovers, and the fewest takeovers cost latency.
    fastest = min(rows, key=lambda r: float(r["response_latency_p50_ms"]))
    safest = min(rows, key=lambda r: float(r["pause_takeover_rate"]))
    assert float(fastest["pause_takeover_rate"]) > float(safest["pause_takeover_rate"])
    assert float(safest["response_latency_p50_ms"]) > float(fastest["response_latency_p50_ms"])
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
