"""Tool calls are parsed out of the LLM stream the same way however the stream is chunked.

Both formats: Step-Audio 2's ``<tool_call>function\\nNAME\\nJSON</tool_call>`` text inside the
reply, and OpenAI's ``delta.tool_calls`` fragments. Markup is never part of the speakable text,
and malformed input never raises.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.actors.tool_calls import (
    CALL_CLOSE,
    CALL_OPEN,
    ParsedToolCall,
    StreamPiece,
    ToolCallChunk,
    ToolCallTextFilter,
    call_text,
    parse_stream,
)

names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
arguments = (
    st.dictionaries(st.text(max_size=8), json_values, max_size=4)
    .map(json.dumps)
    .filter(lambda text: CALL_CLOSE not in text)
)
# Speech that is full of near-misses: "<", "<tool", "</tool_call>" and the like, but no whole opening tag.
speech = st.text(alphabet=st.sampled_from(list("ab .,!?\n<>/_toolcal")), max_size=30).filter(
    lambda text: CALL_OPEN not in text
)


def cut(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def step_audio_streams(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]]]:
    """A reply stream with calls between stretches of speech, and what it should parse to."""
    parts: list[str] = []
    spoken: list[str] = []
    calls: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 3))):
        text = draw(speech)
        name, args = draw(names), draw(arguments)
        parts += [text, call_text(name, args)]
        spoken.append(text)
        calls.append((name, args))
    tail = draw(speech)
    parts.append(tail)
    spoken.append(tail)
    return "".join(parts), "".join(spoken), calls


@settings(max_examples=300)
@given(stream=step_audio_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_step_audio_calls_and_speech_parse_the_same_for_any_chunking(
    stream: tuple[str, str, list[tuple[str, str]]], cuts: list[int]
) -> None:
    text, expected_speech, expected_calls = stream
    spoken, calls = parse_stream(cut(text, cuts))
    assert spoken == expected_speech
    assert [(c.name, c.arguments, c.error) for c in calls] == [(n, a, "") for n, a in expected_calls]
    assert all(c.call_format == "step_audio" for c in calls)


@settings(max_examples=300)
@given(
    text=st.lists(st.sampled_from([*'ab {}":\n', CALL_OPEN, CALL_CLOSE, "function\n", "<tool"]), max_size=40).map(
        "".join
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_text_parses_without_raising_and_never_speaks_an_opening_tag(text: str, cuts: list[int]) -> None:
    whole = parse_stream([text])
    chunked = parse_stream(cut(text, cuts))
    assert chunked == whole
    spoken, _ = whole
    assert CALL_OPEN not in spoken


@settings(max_examples=200)
@given(stream=step_audio_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_speech_before_a_call_is_released_at_once_except_a_possible_tag_start(
    stream: tuple[str, str, list[tuple[str, str]]], cuts: list[int]
) -> None:
    text, _, _ = stream
    first_call = text.find(CALL_OPEN)
    speech_before = text if first_call < 0 else text[:first_call]
    parser, seen, released = ToolCallTextFilter(), "", ""
    for chunk in cut(text, cuts):
        seen += chunk
        released += "".join(item for item in parser.feed(chunk) if isinstance(item, str))
        if len(seen) <= len(speech_before):  # still before any call
            assert seen.startswith(released)
            assert len(seen) - len(released) < len(CALL_OPEN)  # TTS is never starved by more than a tag


@st.composite
def openai_streams(draw: st.DrawFn) -> tuple[list[StreamPiece], str, list[tuple[str, str]]]:
    """OpenAI deltas: text pieces, then each call's name and arguments in fragments (maybe interleaved)."""
    calls = draw(st.lists(st.tuples(names, arguments), max_size=3))
    text = draw(st.text(alphabet="abc .,", max_size=20))
    pieces: list[StreamPiece] = list(cut(text, draw(st.lists(st.integers(0, 100), max_size=5))))
    per_call: list[list[ToolCallChunk]] = []
    for index, (name, args) in enumerate(calls):
        name_parts = cut(name, draw(st.lists(st.integers(0, 100), max_size=3)))
        arg_parts = cut(args, draw(st.lists(st.integers(0, 1000), max_size=8)))
        fragments = [
            ToolCallChunk(index=index, name=part, id=f"call_{index}" if i == 0 else "")
            for i, part in enumerate(name_parts)
        ]
        fragments += [ToolCallChunk(index=index, arguments=part) for part in arg_parts]
        per_call.append(fragments)
    # Interleave the calls' fragments in a drawn order, keeping each call's own order.
    while any(per_call):
        open_calls = [i for i, frags in enumerate(per_call) if frags]
        pieces.append(per_call[draw(st.sampled_from(open_calls))].pop(0))
    return pieces, text, calls


@settings(max_examples=300)
@given(stream=openai_streams())
def test_openai_fragments_assemble_into_the_calls_in_index_order(
    stream: tuple[list[StreamPiece], str, list[tuple[str, str]]],
) -> None:
    pieces, text, calls = stream
    spoken, parsed = parse_stream(pieces)
    assert spoken == text
    assert [(c.name, c.arguments, c.error, c.call_format) for c in parsed] == [(n, a, "", "openai") for n, a in calls]


def test_openai_delta_dicts_convert_to_chunks() -> None:
    delta: dict[str, Any] = {"index": 1, "id": "call_9", "function": {"name": "get_weather", "arguments": '{"ci'}}
    assert ToolCallChunk.from_openai(delta) == ToolCallChunk(index=1, name="get_weather", arguments='{"ci', id="call_9")
    assert ToolCallChunk.from_openai({"index": 1, "function": {"arguments": 'ty": "Paris"}'}}).name == ""


MALFORMED = {
    "arguments are not JSON": (
        '<tool_call>function\nget_weather\n{"city": Paris}</tool_call>',
        "get_weather",
        "not valid JSON",
    ),
    "arguments are not an object": ("<tool_call>function\nget_weather\n[1, 2]</tool_call>", "get_weather", "object"),
    "no kind line": ('<tool_call>get_weather\n{"city": "Paris"}</tool_call>', "", "expected 'function'"),
    "name with spaces": ("<tool_call>function\nget the weather\n{}</tool_call>", "get the weather", "bad tool name"),
    "never closed": ('<tool_call>function\nget_weather\n{"city": "Par', "", "ended inside"),
}


def test_malformed_calls_come_out_with_the_problem_named_and_nothing_spoken() -> None:
    for case, (text, name, problem) in MALFORMED.items():
        spoken, calls = parse_stream(["Let me see. ", text])
        assert spoken == "Let me see. ", case
        assert len(calls) == 1 and calls[0].name == name, case
        assert problem in calls[0].error, (case, calls[0].error)


def test_a_call_without_arguments_is_well_formed() -> None:
    _, calls = parse_stream(["<tool_call>function\nhang_up_call\n</tool_call>"])
    assert calls == [ParsedToolCall("hang_up_call", "", "step_audio", "")]
