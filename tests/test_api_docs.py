"""docs/api.md's examples are the API's specification: every python block runs, in order, in one
namespace from the repository's root, and prints what the text block after it shows (numbers
included: scripted engines on virtual time and the simulator are deterministic). The figures are
also held to what the prose says they show."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PHRASES, REPO

API_DOC = REPO / "docs" / "api.md"
BLOCK = re.compile(r"```python\n(.*?)```\s*\n(?:prints\s*\n\s*```text\n(.*?)```)?", re.S)


def examples() -> list[tuple[str, str | None]]:
    return [(code, shown) for code, shown in BLOCK.findall(API_DOC.read_text())]


@pytest.fixture(scope="module")
def printed() -> list[str]:
    """What each python block of docs/api.md printed, run in order in one namespace."""
    if not PHRASES.is_dir():
        pytest.skip(f"the VAP phrases are not at {PHRASES}")
    namespace: dict[str, Any] = {"__name__": "docs_api"}
    outputs = []
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        for code, _ in examples():
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, str(API_DOC), "exec"), namespace)
            outputs.append(out.getvalue())
    finally:
        os.chdir(cwd)
    return outputs


def test_every_example_prints_what_the_doc_shows(printed: list[str]) -> None:
    blocks = examples()
    assert len(blocks) >= 6, "docs/api.md shows a conversation, a policy, a simulation, a detector, a sweep, a score"
    for (code, shown), out in zip(blocks, printed, strict=True):
        assert out.strip(), f"an example printed nothing:\n{code}"
        assert shown is not None, f"an example has no 'prints' block after it:\n{code}"
        assert out.strip() == shown.strip(), f"docs/api.md shows\n{shown}\nbut the example printed\n{out}"


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def test_the_conversation_answers_the_question_after_the_end_of_turn_silence(printed: list[str]) -> None:
    lines = printed[0].splitlines()
    assert any("user: So do you play basketball?" in line for line in lines)
    assert any("assistant: Yes, every Sunday." in line for line in lines)
    states = [line.split("-> ")[1].split()[0] for line in lines if "controller ->" in line]
    assert states[0] == "UserSpeaking" and "BotReplying" in states and states[-1] == "Silence"


def test_a_longer_end_of_turn_silence_commits_later(printed: list[str]) -> None:
    waits = [_numbers(line) for line in printed[1].splitlines()]
    commits = [numbers[-1] for numbers in waits]
    assert commits == sorted(commits) and commits[0] < commits[-1]
    for set_ms, *_, commit_ms in waits:  # the commit follows the silence asked for (less the VAD's lag)
        assert set_ms - 200 <= commit_ms <= set_ms + 100


def test_the_scripted_detector_commits_sooner_and_waits_through_the_pause(printed: list[str]) -> None:
    detector, silence = printed[3].splitlines()
    assert detector.startswith("scripted detector") and silence.startswith("silence alone")
    assert max(_numbers(detector.split("[")[1].split("]")[0])) < min(_numbers(silence.split("[")[1].split("]")[0]))
    assert detector.endswith("pause takeover 0.0") and silence.endswith("pause takeover 1.0")


def test_the_sweep_trades_latency_for_pause_takeovers(printed: list[str]) -> None:
    rows = [_numbers(line) for line in printed[4].splitlines()]
    assert [row[0] for row in rows] == [700, 1100, 1500]
    latencies = [row[2] for row in rows]
    assert latencies == sorted(latencies)
    assert rows[0][-1] > rows[-1][-1]  # the shortest wait talks into the 1100 ms pause


def test_the_recording_score_finds_the_answer_after_the_gap(printed: list[str]) -> None:
    (line,) = printed[5].splitlines()
    latency = _numbers(line.split("latency")[1])[0]
    assert 600 <= latency <= 1600


def test_import_duplexer_stays_cheap_and_exports_what_the_doc_lists() -> None:
    code = (
        "import sys, duplexer\n"
        "heavy = ('duplexer.sims', 'duplexer.actors', 'duplexer.protocols', 'numpy', 'pydantic')\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "missing = [n for n in duplexer.__all__ if getattr(duplexer, n, None) is None]\n"
        "print(missing)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.splitlines() == ["[]", "[]"]
    import duplexer

    doc = API_DOC.read_text()
    for name in duplexer.__all__:
        if name != "__version__":
            assert f"`{name}" in doc, f"{name} is exported but docs/api.md does not say what it is for"
