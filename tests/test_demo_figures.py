"""`bench demo`'s figures: the latency speculation saves, what bounds it, and pooling over runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplexer.policies.controller import PolicyParams
from duplexer.runtime.events import FRAME_MS
from duplexer.sims.demo import audio_after_commit_ms, pooled_figures
from duplexer.sims.metrics import turn_facts
from duplexer.sims.scenario import parse_scenario
from duplexer.sims.simulator import simulate
from tests.test_cli import run_cli


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ttft_ms=st.integers(30, 900),
    first_chunk_ms=st.integers(20, 300),
    n_words=st.integers(1, 10),
    end_of_turn_ms=st.sampled_from([500, 700, 900]),
)
def test_speculation_saves_exactly_the_wait_after_the_commit_it_removes(
    ttft_ms: int, first_chunk_ms: int, n_words: int, end_of_turn_ms: int
) -> None:
    """Both modes commit at the same moment, so what speculation saves is the first audio's wait after
    the commit without it, less what is left of that wait with it: never more than the former."""
    words = " ".join(["word"] * n_words)
    scenario = parse_scenario(
        {
            "name": "g",
            "engines": {"jitter": 0.0, "llm": {"ttft_ms": ttft_ms}, "tts": {"first_chunk_ms": first_chunk_ms}},
            "policy": {"end_of_turn_ms": end_of_turn_ms},
            "script": [{"say": words}, {"say": words, "start": {"after": "bot_done", "gap_ms": 500}}],
        },
        Path("<generated>"),
    )
    # No end-of-turn detector runs here, so its bound only has to admit the shortest end_of_turn_ms.
    params = PolicyParams(end_of_turn_ms=float(end_of_turn_ms), end_of_turn_min_ms=300.0)
    on, off = simulate(scenario, params), simulate(scenario, replace(params, speculation=False))
    latency_on, latency_off = turn_facts(on).latencies_ms, turn_facts(off).latencies_ms
    assert sorted(latency_on) == sorted(latency_off) == [0, 1]
    for i in (0, 1):
        wait_on, wait_off = audio_after_commit_ms(on, i), audio_after_commit_ms(off, i)
        assert wait_on is not None and wait_off is not None
        assert 0 <= wait_on <= wait_off
        saved = latency_off[i] - latency_on[i]
        # within a frame: playout starts on the output's frame clock
        assert abs(saved - (wait_off - wait_on)) <= FRAME_MS, (saved, wait_off, wait_on)


def _record(latency: float, saved: float | None, wait_off: float, stop: float | None = None) -> dict[str, Any]:
    return {
        "response_latency_ms": latency,
        "latency_saved_ms": saved,
        "barge_in_stop_ms": stop,
        "audio_after_commit_ms": {"speculation_on": 0.0, "speculation_off": wait_off},
    }


def _summary(saved_p50: float, underruns: int) -> dict[str, Any]:
    return {"latency_saved_ms": {"p50": saved_p50}, "output_underruns": underruns}


def test_pooled_figures_are_medians_over_every_turn_of_every_run() -> None:
    run_a = [_record(700, 250, 240), _record(720, 400, 380), _record(760, 260, 250, stop=100)]
    run_b = [_record(690, 330, 300), _record(740, None, 310), _record(800, 350, 340, stop=80)]
    figures = pooled_figures([(run_a, _summary(260, 0)), (run_b, _summary(340, 2))])
    assert figures["turns"] == 6
    assert figures["latency_saved_ms"]["p50"] == 330  # 250 260 330 350 400: a run's own p50 is 260 or 340
    assert figures["response_latency_ms"]["p50"] == 730
    assert figures["barge_in_stop_ms"]["p50"] == 90
    assert figures["audio_after_commit_off_ms"]["p50"] == 305
    assert figures["output_underruns"] == 2
    assert figures["latency_saved_p50_per_run"] == [260, 340]


def test_bench_demo_refuses_a_repeat_below_one(tmp_path: Path) -> None:
    result = run_cli("bench", "demo", "--repeat", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "--repeat" in result.stderr and "must be >= 1" in result.stderr
    assert not (tmp_path / "docs" / "benchmarks.md").exists()
