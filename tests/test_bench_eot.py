"""`duplexer bench eot`: the controller's end-of-turn rule replayed offline, and the command on a tiny subset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from duplexer.bench import eot
from duplexer.bench.eot import Point, Rule, commit_ms, frontier
from duplexer.bench.eot_pauses import ASK_OFFSETS_MS, find_pauses
from tests.conftest import PHRASES

RULE = Rule(min_ms=300.0, unsure_ms=700.0, max_ms=1500.0)


def test_with_no_estimate_the_wait_is_the_default() -> None:
    assert commit_ms([], RULE.policy()) == 700.0


def test_a_confident_estimate_shortens_the_wait_but_not_below_its_arrival() -> None:
    assert commit_ms([(150.0, 1.0)], RULE.policy()) == 300.0
    assert commit_ms([(450.0, 1.0)], RULE.policy()) == 450.0  # it commits the moment the answer lands


def test_a_doubtful_estimate_lengthens_it_and_a_late_one_cannot_undo_a_commit() -> None:
    assert commit_ms([(150.0, 0.0)], RULE.policy()) == 1500.0
    assert commit_ms([(800.0, 0.0)], RULE.policy()) == 700.0  # the default wait ran out first


def test_the_newest_estimate_rules() -> None:
    assert commit_ms([(100.0, 0.0), (500.0, 1.0)], RULE.policy()) == 500.0
    assert commit_ms([(100.0, 1.0), (200.0, 0.0)], RULE.policy()) == 1500.0


def test_the_frontier_keeps_only_points_nothing_beats() -> None:
    pts = [Point(RULE, 500, 0.3), Point(RULE, 600, 0.4), Point(RULE, 700, 0.1), Point(RULE, 900, 0.1)]
    assert [(p.dead_air_ms, p.cutoff) for p in frontier(pts)] == [(500, 0.3), (700, 0.1)]


pytestmark_data = pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")


@pytestmark_data
def test_every_phrase_has_a_short_end_a_mid_turn_pause_and_a_long_end() -> None:
    pauses = find_pauses(PHRASES.parent, ["A", "E"])
    kinds = {
        (p.phrase, p.voice): sorted(q.kind for q in pauses if (q.phrase, q.voice) == (p.phrase, p.voice))
        for p in pauses
    }
    assert len(kinds) == 18
    assert all(k == ["long_end", "long_mid", "short_end"] for k in kinds.values())
    mid = next(p for p in pauses if p.kind == "long_mid")
    end = next(p for p in pauses if p.kind == "long_end" and p.wav == mid.wav)
    assert 0 < mid.speech_end_ms < end.speech_end_ms and math.isinf(end.pause_ms)


def fake_detectors():  # type: ignore[no-untyped-def]
    """Audio: surer with more trailing silence; text: 0.7 always (transcripts are not made)."""

    def audio_p(samples: np.ndarray) -> float:
        trailing = len(samples) - len(np.trim_zeros(samples, "b"))
        return min(0.95, 0.1 + trailing / 16_000)

    return audio_p, lambda samples: "did you come here by bike", lambda words: 0.7


@pytestmark_data
def test_the_command_records_once_replays_and_names_an_operating_point(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(eot, "load_detectors", fake_detectors)
    argv = ["--data", str(PHRASES.parent), "--out", str(tmp_path), "--phrase", "bike", "--phrase", "drive"]
    argv += [
        "--fit-voices",
        "A,B",
        "--voices",
        "E",
        "--no-progress",
        "--max-cutoff",
        "0.5",
        "--log",
        str(tmp_path / "bench.md"),
    ]
    assert eot.main(argv) == 0
    out = capsys.readouterr().out
    assert "PolicyParams(end_of_turn_min_ms=" in out and "silence" in out and "fused" in out
    cache = json.loads((tmp_path / "pauses.json").read_text())
    assert len(cache["recordings"]) == 2 * 3 * 3
    assert all(len(r["p_audio"]) == len(ASK_OFFSETS_MS) for r in cache["recordings"])
    assert (tmp_path / "eot_curve.png").stat().st_size > 10_000
    log = (tmp_path / "bench.md").read_text()
    assert "duplexer bench eot" in log and "![dead air vs false cut-offs](eot_curve.png)" in log

    def no_models():  # type: ignore[no-untyped-def]
        raise AssertionError("the second run must read the cache")

    monkeypatch.setattr(eot, "load_detectors", no_models)
    assert eot.main([*argv[:-2], "--no-log"]) == 0


def test_bad_voices_are_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        eot.main(["--voices", "E,Z"])
    assert exit_info.value.code == 2
    assert "voices are a comma-separated subset" in capsys.readouterr().err
