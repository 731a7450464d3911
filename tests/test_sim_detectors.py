"""End-of-turn detectors in the simulator: a scenario scripts the detector's probability per pause (or
names a text detector), the live turn-detector actor passes it to the controller, and `duplexer sim`'s
report sets the end-of-turn commit times against the same script with silence alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from duplexer.cli import main
from duplexer.policies.params import PolicyParams
from duplexer.runtime.events import EndOfTurnProbability
from duplexer.sims.scenario import ScenarioError, detector_of, load_scenario
from duplexer.sims.simulator import simulate
from tests.conftest import SCENARIOS

SHIPPED = SCENARIOS / "detector_scripted_pause.yaml"


def sim_report(paths: list[Path], report: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    assert main(["sim", *map(str, paths), "--report", str(report), "--no-plots", "--quiet"]) == 0
    return json.loads((report / "summary.json").read_text()), capsys.readouterr().out


def test_a_scripted_detector_commits_at_other_times_than_silence_alone_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary, table = sim_report([SHIPPED], tmp_path / "out", capsys)
    scenario = summary["scenarios"]["detector_scripted_pause"]
    detector = scenario["turn_detector"]
    assert detector["name"] == "scripted" and detector["estimates"] > 0
    with_detector = [turn["end_of_turn_commit_ms"] for turn in scenario["per_turn"]]
    alone = detector["silence_alone"]["per_turn_end_of_turn_commit_ms"]
    policy = PolicyParams()
    # p = 0.99 at each end asks for about end_of_turn_min_ms; silence alone waits end_of_turn_ms
    sure_ms = policy.effective_end_of_turn_ms(0.99)
    for ours, theirs in zip(with_detector, alone, strict=True):
        assert ours is not None and theirs is not None
        assert ours < theirs - 100
        assert abs(ours - sure_ms) < 60 and abs(theirs - policy.end_of_turn_ms) < 60
    # p = 0.05 in the 1000 ms pause: the bot waits through it; silence alone (700 ms) talks into it
    assert detector["pause_takeover_rate"] == 0.0 and detector["silence_alone"]["pause_takeover_rate"] == 1.0
    assert "turn detector" in table and "scripted" in table


def test_a_scenario_without_a_detector_reports_no_detector_and_the_same_commit_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(SHIPPED.read_text().replace("turn_detector: scripted", "turn_detector: none"))
    summary, table = sim_report([plain], tmp_path / "out", capsys)
    scenario = summary["scenarios"]["detector_scripted_pause"]
    assert "turn_detector" not in scenario and "turn detector" not in table
    commits = [turn["end_of_turn_commit_ms"] for turn in scenario["per_turn"]]
    assert commits[-1] is not None and abs(commits[-1] - PolicyParams().end_of_turn_ms) < 60


def test_probabilities_alone_choose_the_scripted_detector_and_reach_the_controller_per_pause(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nscript:\n  - say: book a table for four people\n"
        "    pauses: [{after_word: 2, ms: 900, end_of_turn: 0.1}]\n    end_of_turn: 0.9\n"
    )
    scenario = load_scenario(path)
    assert detector_of(scenario) == "scripted"
    run = simulate(scenario, PolicyParams(), seed=3)
    said = [e.probability for e in run.events if isinstance(e, EndOfTurnProbability)]
    assert 0.1 in said and 0.9 in said  # each after the words it was scripted for
    assert said.index(0.1) < said.index(0.9)


SEGMENTED = """\
name: s
script:
  - say: can you recommend a good book
    segments:
      - {start_ms: 0, end_ms: 900, words: [[0, can], [300, you], [600, recommend]], end_of_turn: 0.2}
      - {start_ms: 1900, end_ms: 2800, words: [[1900, a], [2100, good], [2400, book]], end_of_turn: 0.8}
"""


def test_segments_timed_from_recordings_take_a_probability_each(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SEGMENTED)
    run = simulate(load_scenario(path), PolicyParams(), seed=0)
    said = [e.probability for e in run.events if isinstance(e, EndOfTurnProbability)]
    assert 0.2 in said and 0.8 in said and said.index(0.2) < said.index(0.8)
    # p = 0.2 in the 1000 ms gap asks for a long wait: the bot does not take the floor there
    gap_start, gap_end = run.steps[0].segments[0][1], run.steps[0].segments[1][0]
    assert not any(gap_start <= a.start_ms < gap_end for a in run.bot_audio)


def test_a_pause_without_a_probability_gets_no_opinion(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nturn_detector: scripted\nscript:\n  - say: book a table for four people\n"
        "    pauses: [{after_word: 2, ms: 900}]\n"
    )
    run = simulate(load_scenario(path), PolicyParams(), seed=0)
    said = {e.probability for e in run.events if isinstance(e, EndOfTurnProbability)}
    assert said == {0.5}


BAD = {
    "a probability above 1": (
        "    end_of_turn: 1.5\n",
        "script[0].end_of_turn: Input should be less than or equal to 1",
    ),
    "a negative probability": (
        "    pauses: [{after_word: 1, ms: 500, end_of_turn: -0.1}]\n",
        "script[0].pauses[0].end_of_turn",
    ),
    "a probability written as text": (
        '    end_of_turn: "0.5"\n',
        "script[0].end_of_turn: Input should be a valid number",
    ),
    "a probability of true": ("    end_of_turn: true\n", "script[0].end_of_turn"),
    "NaN": ("    end_of_turn: .nan\n", "script[0].end_of_turn"),
    "an unknown detector": ("turn_detector: magic\n", "turn_detector: must be one of scripted, none, smollm2"),
    "a detector that is not a name": ("turn_detector: [scripted]\n", "turn_detector"),
    "probabilities beside a text detector": (
        "turn_detector: smollm2\n    end_of_turn: 0.9\n",
        "script[0].end_of_turn: only the scripted turn detector reads it",
    ),
    "the turn's end given twice": (
        "    end_of_turn: 0.9\n    segments: [{start_ms: 0, end_ms: 500, end_of_turn: 0.9}]\n",
        "script[0]: the turn's end_of_turn is given twice",
    ),
    "a segment probability above 1": (
        "    segments: [{start_ms: 0, end_ms: 500, end_of_turn: 2}]\n",
        "script[0].segments[0].end_of_turn",
    ),
    "a negative detector latency": (
        "engines:\n  turn_detector: {latency_ms: -1}\n",
        "engines.turn_detector.latency_ms",
    ),
    "an unknown detector field": (
        "engines:\n  turn_detector: {model: x}\n",
        "engines.turn_detector.model: unknown field",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_detector_fields_exit_2_with_one_line_naming_file_and_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addition, expected = BAD[case]
    top = "".join(line + "\n" for line in addition.splitlines() if not line.startswith("    "))
    step = "".join(line + "\n" for line in addition.splitlines() if line.startswith("    "))
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: x\n{top}script:\n  - say: hello there\n{step}")
    with pytest.raises(ScenarioError):
        load_scenario(path)
    assert main(["sim", str(path), "--report", str(tmp_path / "out"), "--no-plots", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) < 400, err[:400]
    assert err.startswith(f"duplexer: error: {path}: ") and expected in err, err


@pytest.mark.slow
def test_the_live_text_detector_reads_the_scripted_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SmolLM2, the live text detector, in simulation: it reads "can you recommend" as unfinished, so
    the bot waits through the pause that silence alone talks into."""
    pytest.importorskip("llama_cpp")
    path = tmp_path / "smollm2.yaml"
    path.write_text(
        "name: smollm2\nturn_detector: smollm2\nscript:\n"
        '  - say: "Can you recommend a good book for the weekend"\n'
        "    pauses: [{after_word: 3, ms: 1000}]\n"
    )
    summary, table = sim_report([path], tmp_path / "out", capsys)
    detector = summary["scenarios"]["smollm2"]["turn_detector"]
    assert detector["name"] == "smollm2" and detector["estimates"] > 0 and "smollm2" in table
    assert detector["pause_takeover_rate"] == 0.0 and detector["silence_alone"]["pause_takeover_rate"] == 1.0


def test_a_text_detector_that_cannot_load_here_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from duplexer.actors.models import llama_turn_detector
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.sims.turn_detector_script import text_detector

    def missing(*args: object) -> None:
        raise ModelPackageMissing("the turn detector needs llama-cpp-python: pip install llama-cpp-python")

    monkeypatch.setattr(llama_turn_detector, "LlamaTurnDetector", missing)
    text_detector.cache_clear()
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nturn_detector: smollm2\nscript:\n  - say: hello there\n")
    try:
        assert main(["sim", str(path), "--report", str(tmp_path / "out"), "--no-plots", "--quiet"]) == 2
    finally:
        text_detector.cache_clear()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"duplexer: error: {path}: turn_detector: smollm2 cannot be loaded")
    assert "pip install llama-cpp-python" in err
