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
    "an event named by a control character": ('name: x\nscript:\n  - "\\x1E": 0\n', "unknown event ('\\x1e')"),
    "event names of mixed types": ("name: x\nscript:\n  - {1: a, b: 2, true: 3, d: 4}\n", "is not text"),
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
    assert len(message.splitlines()) == 1  # splitlines: any line break, control characters included
    assert message.startswith(str(path))
    assert expected in message


def test_duplicate_names_across_files_are_refused(tmp_path: Path) -> None:
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.yaml").write_text("name: same\nscript:\n  - say: hi\n")
    with pytest.raises(ScenarioError, match="already used"):
        collect_scenarios([tmp_path])


def _bomb() -> str:
    """A "billion laughs": nine lists of nine aliases of the one before, 9**9 values expanded."""
    lines = ["name: x", "script:", "  - say: hi", "    reply:", "      call: {name: t}", "      tool:"]
    lines.append("        result:")
    lines.append('          a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]')
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"          {name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, tuple[bytes, str]] = {
    "binary": (b"\x00\x01\xff\xfe garbage", "not UTF-8 text"),
    "not UTF-8": ("name: caf\xe9\nscript:\n  - say: hi\n".encode("latin-1"), "not UTF-8 text"),
    "nested 600 deep": (
        b"name: x\nscript:\n  - say: hi\n    reply:\n      call: {name: t}\n      tool: {result: "
        + b"[" * 600
        + b"]" * 600
        + b"}\n",
        "nested more than 32 levels deep",
    ),
    "5001-digit integer": (b"name: x\ntail_ms: " + b"9" * 5001 + b"\nscript:\n  - say: hi\n", "tail_ms: a number has"),
    "say only a space": (b'name: x\nscript:\n  - say: " "\n', "script[0].say: must hold at least one word"),
    "no segments": (b"name: x\nscript:\n  - say: hi\n    segments: []\n", "script[0].segments"),
    "invalid tool name": (
        b"name: x\nscript:\n  - say: hi\n    reply:\n      call: {name: 'bad name!'}\n",
        "script[0].reply.call.name: a tool name is",
    ),
    "NUL in the name": (b'name: "a\\0b"\nscript:\n  - say: hi\n', "name: must be printable"),
    "300-character name": (b"name: " + b"a" * 300 + b"\nscript:\n  - say: hi\n", "name: String should have at most"),
    "1 MB name": (b"name: " + b"a" * 1_000_000 + b"\nscript:\n  - say: hi\n", "name: String should have at most"),
    "NaN policy value": (
        b"name: x\npolicy: {asr_final_timeout_ms: .nan}\nscript:\n  - say: hi\n",
        "policy.asr_final_timeout_ms: Input should be a finite number",
    ),
    "NaN time": (b"name: x\ntail_ms: .nan\nscript:\n  - say: hi\n", "tail_ms: Input should be a finite number"),
    "2.5 for an integer": (
        b"name: x\nscript:\n  - say: hi there you\n    pauses: [{after_word: 2.5, ms: 300}]\n",
        "script[0].pauses[0].after_word",
    ),
    "2.5 for an integer policy value": (
        b"name: x\npolicy: {max_speculative_calls: 2.5}\nscript:\n  - say: hi\n",
        "policy: policy parameter max_speculative_calls must be an integer",
    ),
    "true for a number": (b"name: x\ntail_ms: true\nscript:\n  - say: hi\n", "tail_ms: Input should be a valid number"),
    "alias bomb in tool.result": (_bomb().encode(), "script[0].reply.tool.result"),
    "max_duration_ms 1e12": (b"name: x\nmax_duration_ms: 1e12\nscript:\n  - say: hi\n", "max_duration_ms"),
    "a script longer than its budget": (
        b"name: x\nmax_duration_ms: 60000\nscript:\n  - say: hi\n  - silence_ms: 120000\n",
        "max_duration_ms: the script needs at least",
    ),
    "a date where text is due": (b"name: 2024-01-01\nscript:\n  - say: hi\n", "name: a YAML date is not allowed"),
    "an alias that holds itself": (
        b"name: x\nscript:\n  - say: hi\n    reply:\n      call: {name: t}\n      tool: {result: &r [*r]}\n",
        "refers to a value that holds it",
    ),
    "a tool parameter named like a model attribute": (
        b"name: x\nscript:\n  - say: hi\n    reply:\n      call: {name: t}\n"
        b"      tool: {params: {__class__: string}}\n",
        "script[0].reply.tool.params",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_scenario_exits_2_with_one_line_naming_file_and_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from duplexer.cli import main

    content, expected = HOSTILE[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["sim", str(path), "--report", str(tmp_path / "out"), "--no-plots", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) < 400, err[:400]
    assert err.startswith(f"duplexer: error: {path}: ") and expected in err


def test_a_time_written_1e3_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: x\ntail_ms: 1e3\nscript:\n  - say: hi\n    duration_ms: 2.5e2\n")
    scenario = load_scenario(path)
    assert scenario.tail_ms == 1000.0


@pytest.mark.parametrize("name", ["{root}/escaped", "../escaped", "../../escaped", "a/b", "..", "C:\\\\x"])
def test_a_scenario_name_never_writes_outside_the_report_folder(name: str, tmp_path: Path) -> None:
    from duplexer.cli import main

    work = tmp_path / "work"
    work.mkdir()
    name = name.format(root=tmp_path)
    (work / "s.yaml").write_text(f'name: "{name}"\nscript:\n  - say: hi\n')
    report = work / "deep" / "report"
    assert main(["sim", str(work / "s.yaml"), "--report", str(report), "--quiet"]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert len(written) == 1 and written[0].parent == report.relative_to(tmp_path), written


def test_two_names_with_one_file_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a/b\nscript:\n  - say: hi\n")
    (tmp_path / "b.yaml").write_text("name: a_b\nscript:\n  - say: hi\n")
    with pytest.raises(ScenarioError, match="give the same file name 'a_b'"):
        collect_scenarios([tmp_path])


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--set=asr_final_timeout_ms=nan", "--set: policy parameter asr_final_timeout_ms must be finite"),
        ("--set=asr_final_timeout_ms=" + "9" * 5001, "not a number or true/false"),
        ("--sweep=pause_ms=0:1e12:1e-9", "more than 1000 values"),
        ("--sweep=pause_ms=0:inf:1", "expected key=start:stop:step"),
    ],
)
def test_hostile_policy_options_exit_2_with_one_line(
    option: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from duplexer.cli import main

    scenario = str(SCENARIOS / "fast_engines.yaml")
    assert main(["sim", scenario, option, "--report", str(tmp_path / "o"), "--no-plots", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) < 400 and expected in err, err[:400]
