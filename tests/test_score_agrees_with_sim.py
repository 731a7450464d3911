"""Scored from audio, a simulated conversation gives the simulator's own figures, within one VAD window.

Every shipped scenario is simulated, its timelines rendered to a stereo wav (real speech from the
VAP phrases on every user segment and every bot interval, silence elsewhere; noise steps are not
user speech and are rendered as noise below the audible level) and ``duplexer score`` run on it
with the script's turn windows: each step's kind and its start and end, not its exact segments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duplexer.cli import main
from duplexer.protocols.wav import interleave_stereo, write_wav
from duplexer.sims.audio_timeline import VAD_WINDOW_MS, user_turns_from_spans
from duplexer.sims.metrics import turn_facts, user_turns
from duplexer.sims.report import make_params
from duplexer.sims.scenario import collect_scenarios
from duplexer.sims.simulator import SimRun, simulate
from tests.conftest import SCENARIOS, SHARED, voiced

PHRASES = SHARED / "data" / "vap_phrases" / "audio"
RATE_HZ = 16_000
NOISE_DBFS = -50.0
"""A noise step's level: below the audible level (-40 dBFS), so it is not speech."""

BARGE_IN_INTO_A_FRESH_REPLY = {"barge_in_early", "barge_in_before_audio", "follow_up_before_reply"}
"""The user speaks again within the turn gap, over a reply that began in their silence: from audio
alone that is a talk-over in one turn; the script says a new turn (docs/score.md)."""

needs_phrases = pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")


def render(
    spans: list[tuple[float, float]], duration_ms: float, seed: int, noise: tuple[tuple[float, float], ...] = ()
) -> np.ndarray:
    """A track with speech exactly on ``spans`` (each from its own place in the voiced speech), and
    quiet noise on ``noise``."""
    source = voiced()
    track = np.zeros(int(duration_ms * RATE_HZ / 1000) + RATE_HZ, dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start, end in noise:
        a, b = round(start * RATE_HZ / 1000), round(end * RATE_HZ / 1000)
        track[a:b] = rng.uniform(-1.0, 1.0, b - a) * 10.0 ** (NOISE_DBFS / 20.0)
    cursor = (seed * 7919 * RATE_HZ // 10) % len(source)
    for start, end in spans:
        a, b = round(start * RATE_HZ / 1000), round(end * RATE_HZ / 1000)
        if cursor + (b - a) > len(source):
            cursor = 0
        track[a:b] = source[cursor : cursor + (b - a)]
        cursor += b - a
    return np.round(track * 32767.0).astype(np.int16)


def score_from_audio(run: SimRun, folder: Path, seed: int) -> list[dict[str, Any]]:
    user = [seg for step in run.steps if step.kind in ("say", "backchannel") for seg in step.segments]
    noise = tuple(seg for step in run.steps if step.kind == "noise" for seg in step.segments)
    bot = [(a.start_ms, a.end_ms) for a in run.bot_audio]
    wav = folder / f"{run.scenario}.wav"
    write_wav(
        wav,
        interleave_stereo(render(user, run.duration_ms, seed, noise), render(bot, run.duration_ms, seed + 1)),
        RATE_HZ,
        2,
    )
    windows = [
        {"start_ms": s.start_ms, "end_ms": s.end_ms, "kind": "turn" if s.kind == "say" else "backchannel"}
        for s in run.steps
        if s.kind in ("say", "backchannel") and s.end_ms > s.start_ms
    ]
    turns, out = folder / f"{run.scenario}_turns.json", folder / f"{run.scenario}_score.json"
    turns.write_text(json.dumps(windows))
    assert main(["score", str(wav), "--turns", str(turns), "--json", str(out)]) == 0
    rows: list[dict[str, Any]] = json.loads(out.read_text())["per_turn"]
    return rows


EQUAL_KEYS = (
    "kind",
    "pauses",
    "bot_speaking_at_onset",
    "talk_over_count",
    "pause_taken_over",
    "backchannel_stopped_bot",
    "takeover",
)
"""Per-turn counts and flags that must be the same from audio as from the simulator's timelines."""


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= VAD_WINDOW_MS)


def disagreements(run: SimRun, rows: list[dict[str, Any]]) -> list[str]:
    sim = [t.row() for t in turn_facts(run).turns]
    if len(sim) != len(rows):
        return [f"{len(sim)} turns simulated, {len(rows)} scored from audio"]
    found: list[str] = []
    for s, a in zip(sim, rows, strict=True):
        for key in EQUAL_KEYS:
            if s[key] != a[key]:
                found.append(f"turn {s['turn']} {key}: sim {s[key]}, audio {a[key]}")
        for key in ("start_ms", "end_ms", "response_latency_ms", "talk_over_ms", "barge_in_stop_ms"):
            if not close(s[key], a[key]):
                found.append(f"turn {s['turn']} {key}: sim {s[key]}, audio {a[key]}")
    return found


@needs_phrases
def test_audio_scores_agree_with_the_simulator_on_every_shipped_scenario(tmp_path: Path) -> None:
    """About 10 s for all of them (Silero runs at about 0.2 ms a window), so none is left out."""
    params = make_params({})
    problems: list[str] = []
    scenarios = collect_scenarios([SCENARIOS])
    assert len(scenarios) >= 30
    for seed, (_, scenario) in enumerate(scenarios):
        run = simulate(scenario, params)
        rows = score_from_audio(run, tmp_path, 2 * seed)
        problems += [f"{scenario.name}: {p}" for p in disagreements(run, rows)]
    assert not problems, "\n".join(problems)


def test_without_turn_windows_the_rule_finds_the_scripts_turns() -> None:
    params = make_params({})
    differ: set[str] = set()
    for _, scenario in collect_scenarios([SCENARIOS]):
        run = simulate(scenario, params)
        script, _ = user_turns(run)
        spans = [segment for turn in script for segment in turn.segments]
        found = user_turns_from_spans(spans, [(a.start_ms, a.end_ms) for a in run.bot_audio])
        if [(t.kind, t.segments) for t in script] != [(t.kind, t.segments) for t in found]:
            differ.add(scenario.name)
    assert differ == BARGE_IN_INTO_A_FRESH_REPLY
