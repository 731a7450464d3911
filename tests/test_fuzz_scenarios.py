"""Fuzzing `duplexer sim` with scenario files: valid scenarios with one field mutated, random YAML
text and random bytes go through the command's entry function in process. Every one either runs
(exit 0) or is refused with exit 2 and one line naming the file; never a traceback, never a hang."""

from __future__ import annotations

import contextlib
import io
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from duplexer.cli import main
from tests.conftest import fuzz_settings

pytestmark = pytest.mark.fuzz

EXAMPLE_LIMIT_S = 30
"""Longest one example may take: a valid scenario runs twice on the virtual clock in well under it."""


class ExampleTooSlow(Exception):
    """An example ran past EXAMPLE_LIMIT_S: a hang, whatever the input."""


@contextlib.contextmanager
def time_bound(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise ExampleTooSlow(f"one example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_sim(content: bytes) -> tuple[int, str, Path]:
    """`duplexer sim FILE` on ``content``, in process: exit code, stderr, and the file's path."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_bytes(content)
        err, out = io.StringIO(), io.StringIO()
        argv = ["sim", str(path), "--report", str(Path(folder) / "report"), "--no-plots", "--quiet"]
        with time_bound(EXAMPLE_LIMIT_S), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
        return code, err.getvalue(), path


def assert_clean_outcome(code: int, err: str, path: Path) -> None:
    event(f"exit {code}")
    assert code in (0, 2), (code, err[-2000:])
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err[-2000:]
        assert lines[0].startswith(f"duplexer: error: {path}: "), lines[0][:300]
        assert len(lines[0]) < 1000, lines[0][:300]
    assert "Traceback" not in err


# ------------------------------------------------------------------ strategies

words = st.lists(st.sampled_from(["hello", "there", "what", "time", "is", "it", "ok"]), min_size=1, max_size=6)
short_ms = st.floats(min_value=1.0, max_value=3000.0, allow_nan=False)
probabilities = st.floats(min_value=0.0, max_value=1.0)


@st.composite
def steps(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["say", "backchannel", "noise", "silence_ms", "tool"]))
    if kind == "say":
        said = draw(words)
        step: dict[str, Any] = {"say": " ".join(said)}
        if draw(st.booleans()):
            step["duration_ms"] = draw(short_ms)
        if draw(st.booleans()):  # what a scripted end-of-turn detector says at the end, and in a pause
            step["end_of_turn"] = draw(probabilities)
            if len(said) > 1:
                pause = {"after_word": draw(st.integers(1, len(said) - 1)), "ms": draw(short_ms)}
                step["pauses"] = [{**pause, "end_of_turn": draw(probabilities)}]
        elif draw(st.booleans()):  # speech timed as from a recording, the detector scripted per segment
            step.pop("duration_ms", None)
            first_end = draw(short_ms)
            second_start = first_end + draw(short_ms)  # short_ms is at most 3000: the segment is not empty
            step["segments"] = [
                {"start_ms": 0, "end_ms": first_end, "end_of_turn": draw(probabilities)},
                {"start_ms": second_start, "end_ms": first_end + 3100, "end_of_turn": draw(probabilities)},
            ]
    elif kind == "backchannel":
        step = {"backchannel": "mm-hmm"}
    elif kind == "noise":
        step = {"noise": {"duration_ms": draw(short_ms), "probability": draw(st.floats(0.0, 1.0))}}
    elif kind == "silence_ms":
        step = {"silence_ms": draw(short_ms)}
    else:
        step = {
            "say": "what is the weather",
            "reply": {
                "preface": "let me check",
                "call": {"name": "get_weather", "args": {"city": "Paris"}},
                "tool": {"latency_ms": draw(short_ms), "result": {"temp_c": 18}},
                "then": "sunny",
            },
        }
    if draw(st.booleans()):
        step["start"] = draw(
            st.sampled_from(
                [
                    {"after": "previous", "gap_ms": 300},
                    {"after": "bot_done", "gap_ms": 400},
                    {"after": "bot_start", "gap_ms": 800, "wait_ms": 3000},
                ]
            )
        )
    return step


@st.composite
def valid_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    scenario: dict[str, Any] = {
        "name": draw(st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=20)),
        "script": draw(st.lists(steps(), min_size=1, max_size=3)),
        "tail_ms": 1000,
        "max_duration_ms": 60_000,
    }
    if draw(st.booleans()):
        scenario["engines"] = {"llm": {"ttft_ms": draw(short_ms), "tokens_per_s": 40}, "jitter": 0.1}
    if draw(st.booleans()):
        scenario["policy"] = {"pause_ms": 200}
    if draw(st.booleans()):  # the cheap detectors only: a real model would load in each example
        scenario["turn_detector"] = draw(st.sampled_from(["scripted", "none"]))
        scenario.setdefault("engines", {})["turn_detector"] = {"latency_ms": draw(short_ms)}
    return scenario


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**40, max_value=10**4000),  # hypothesis and yaml print ints of < 4300 digits
    st.floats(),  # NaN and infinities included
    st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e12, 2.5, 5e-324]),
    st.text(max_size=50),
    st.sampled_from(["", " ", "\x00", "a/b", "../../x", "/abs", "x" * 300, "bad name!", "1e12", ".nan"]),
    st.lists(st.integers(), max_size=3),
    st.just([]),
    st.just({}),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.integers(min_value=30, max_value=80).map(deep),
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a nested value a mutation may go (mappings' keys and lists' items)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def mutated(scenario: dict[str, Any], where: tuple[Any, ...], value: Any) -> Any:
    if not where:
        return value
    node: Any = scenario
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    return scenario


KNOWN_FIELDS = [
    "at_ms",
    "gap_ms",
    "wait_ms",
    "pauses",
    "segments",
    "asr_final_timeout_ms",
    "registered",
    "params",
    "end_of_turn",
    "turn_detector",
]


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> bytes:
    scenario = draw(valid_scenarios())
    for _ in range(draw(st.integers(0, 2))):  # none: the valid scenario itself must run
        where = draw(st.sampled_from(paths(scenario)))
        if draw(st.integers(0, 4)) == 0 and where and isinstance(where[-1], str):  # a field added beside it
            where = (*where[:-1], draw(st.sampled_from(KNOWN_FIELDS)))
            parent: Any = scenario
            for key in where[:-1]:
                parent = parent[key]
            if not isinstance(parent, dict):
                continue
        scenario = mutated(scenario, where, draw(hostile_values))
    try:
        return yaml.safe_dump(scenario, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, RecursionError):
        return b"name: x\nscript: []\n"


YAML_FRAGMENTS = [
    "name: x\n",
    "script:\n",
    "  - say: hi\n",
    "tail_ms: " + "9" * 5001 + "\n",
    "&a [*a]",
    "*b",
    "!!binary aGk=",
    "? [a]\n: 1\n",
    "{",
    "[",
    ": :",
    "---\n",
]
"""Pieces of scenario files and of YAML's odder corners, mixed with random text."""
yaml_fragments = st.sampled_from(YAML_FRAGMENTS)
random_yaml = st.lists(st.one_of(yaml_fragments, st.text(max_size=30)), max_size=8).map(lambda parts: "".join(parts))


# ------------------------------------------------------------------ properties


@fuzz_settings()
@given(mutated_scenarios())
def test_a_mutated_scenario_runs_or_is_refused_in_one_line(content: bytes) -> None:
    assert_clean_outcome(*run_sim(content))


@fuzz_settings()
@given(random_yaml)
def test_random_yaml_text_runs_or_is_refused_in_one_line(text: str) -> None:
    assert_clean_outcome(*run_sim(text.encode("utf-8", "surrogatepass")))


@fuzz_settings()
@given(st.binary(max_size=2000))
def test_random_bytes_are_refused_in_one_line(content: bytes) -> None:
    assert_clean_outcome(*run_sim(content))
