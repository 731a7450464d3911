"""Shipped scenarios load; malformed ones are refused with the file and field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplexer.sims.scenario import ScenarioError, collect_scenarios, load_scenario
from tests.conftest import SCENARIOS, SHARED

REQUIRED_KINDS = [
    "plain",
    "long_pause",
    "quick_follow_up",
    "barge_in_early",
    "barge_in_late",
    "backchannel",
    "noise_burst",
    "never_answers",
    "very_long_user_turn",
    "rapid_short_exchanges",
    "vap_",
]


def test_at_least_twenty_shipped_scenarios_cover_the_required_situations() -> None:
    loaded = collect_scenarios([SCENARIOS])
    names = [sc.name for _, sc in loaded]
    assert len(names) >= 20
    for kind in REQUIRED_KINDS:
        assert any(kind in name for name in names), f"no shipped scenario for {kind}"


@pytest.mark.skipif(not (SHARED / "data" / "vap_phrases").exists(), reason="shared data not beside the repo")
def test_vap_scenarios_are_what_the_recordings_give(tmp_path: Path) -> None:
    from duplexer.bench.vap_scenarios import main

    assert main([str(SHARED / "data" / "vap_phrases"), str(tmp_path)]) == 0
    for generated in tmp_path.glob("vap_*.yaml"):
        assert generated.read_text() == (SCENARIOS / generated.name).read_text()


BAD = {
    "malformed YAML": ("name: x\nscript: [\n", "not valid YAML"),
    "unknown field": ("name: x\nscript:\n  - say: hi\n    volume: 11\n", "script[0].volume: unknown field"),
    "unknown top-level field": ("name: x\ncolour: red\nscript:\n  - say: hi\n", "colour: unknown field"),
    "unknown event": ("name: x\nscript:\n  - shout: hi\n", "script[0]: unknown event"),
    "negative duration": ("name: x\nscript:\n  - say: hi\n    duration_ms: -5\n", "script[0].duration_ms"),
    "negative engine latency": (
        "name: x\nengines:\n  llm: {ttft_ms: -1}\nscript:\n  - say: hi\n",
        "engines.llm.ttft_ms",
    ),
    "out-of-order absolute times": (
        "name: x\nscript:\n  - say: hi\n    start: {at_ms: 900}\n  - say: yo\n    start: {at_ms: 100}\n",
        "script[1].start.at_ms",
    ),
    "out-of-order segments": (
        "name: x\nscript:\n  - say: hi there\n    segments:\n      - {start_ms: 500, end_ms: 900}\n"
        "      - {start_ms: 100, end_ms: 300}\n",
        "segments out of order",
    ),
    "pause beyond the words": (
        "name: x\nscript:\n  - say: hi there\n    pauses: [{after_word: 5, ms: 300}]\n",
        "after_word 5",
    ),
    "missing script": ("name: x\n", "script: Field required"),
    "not a mapping": ("- just\n- a list\n", "must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenario_gets_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert expected in message


def test_duplicate_names_across_files_are_refused(tmp_path: Path) -> None:
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.yaml").write_text("name: same\nscript:\n  - say: hi\n")
    with pytest.raises(ScenarioError, match="already used"):
        collect_scenarios([tmp_path])
