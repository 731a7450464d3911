"""Tool calls in an LLM's stream: parsed out of the text before it reaches speech.

Two formats are understood:

- Step-Audio 2's text format, inline in the reply text:
  ``<tool_call>function\\nget_weather\\n{"city": "Paris"}</tool_call>``.
  :class:`ToolCallTextFilter` splits streamed text into speakable text and call spans,
  holding back any tail that could still become ``<tool_call>``, so no markup is ever spoken
  however the stream is chunked.
- OpenAI function calling: ``delta.tool_calls`` fragments (an index, then the id and name,
  then the arguments JSON in pieces), given to the actor as :class:`ToolCallChunk` objects
  between the text pieces and assembled by :class:`OpenAiToolCallAssembler`.

Parsing never raises: a malformed call comes out as a :class:`ParsedToolCall` whose
``error`` says what is wrong, so the session can report it and recover.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from duplexer.actors.engines import Message
from duplexer.runtime.clock import Clock

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALL_KIND = "function"
"""The first line of a Step-Audio 2 call body: the call's type."""

CallFormat = Literal["step_audio", "openai"]


class ToolStatus(enum.StrEnum):
    """How a tool call ended (:class:`~duplexer.runtime.events.ToolResult` ``status``)."""

    OK = "ok"
    ERROR = "error"
    """The tool raised."""
    TIMEOUT = "timeout"
    INVALID = "invalid"
    """Malformed call, unknown or not allowed tool, or arguments that fail the schema: never run."""
    CANCELLED = "cancelled"
    """A read-only call stopped (or never started) because its reply was cancelled."""
    PREVENTED = "prevented"
    """A side-effecting call that never ran: its reply was cancelled or not played to the end."""

    @property
    def failed(self) -> bool:
        """A failure the user should hear about."""
        return self in (ToolStatus.ERROR, ToolStatus.TIMEOUT, ToolStatus.INVALID)


@dataclass(frozen=True)
class ToolCallChunk:
    """One OpenAI ``delta.tool_calls[i]`` fragment: later fragments of an index extend earlier ones."""

    index: int
    name: str = ""
    arguments: str = ""
    id: str = ""

    @classmethod
    def from_openai(cls, delta: Mapping[str, Any]) -> ToolCallChunk:
        """From the dict of one streamed ``tool_calls`` entry."""
        function = delta.get("function") or {}
        return cls(
            index=int(delta.get("index", 0)),
            name=function.get("name") or "",
            arguments=function.get("arguments") or "",
            id=delta.get("id") or "",
        )


StreamPiece = str | ToolCallChunk
"""What a tool-calling LLM engine streams: reply text, or a fragment of a function call."""


class ToolCallingLlmEngine(Protocol):
    """An LLM engine whose stream may carry OpenAI-style call fragments between text pieces.

    Every plain :class:`~duplexer.actors.engines.LlmEngine` is one (it streams text only).
    """

    def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[StreamPiece]: ...


@dataclass(frozen=True)
class ParsedToolCall:
    """One call as the model wrote it; ``error`` is empty when it is well formed."""

    name: str
    arguments: str
    call_format: CallFormat
    error: str = ""


def call_text(name: str, arguments: str) -> str:
    """The canonical text of a call, as it enters the history (whatever format the model used)."""
    return f"{CALL_OPEN}{CALL_KIND}\n{name}\n{arguments}{CALL_CLOSE}"


def _check_arguments(arguments: str) -> str:
    """Why the arguments text is not a JSON object, or "" when it is."""
    if not arguments.strip():
        return ""  # no arguments at all: the same as {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        return f"arguments are not valid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(value, dict):
        return f"arguments must be a JSON object, got {type(value).__name__}"
    return ""


def _parse_json_body(body: str) -> ParsedToolCall:
    """Hermes/Qwen chat templates' body: ``{"name": ..., "arguments": {...}}``."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return ParsedToolCall("", body, "step_audio", f"the call is not valid JSON ({exc.msg} at character {exc.pos})")
    name = value.get("name") if isinstance(value, dict) else None
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        return ParsedToolCall("", body, "step_audio", 'a JSON call needs {"name": ..., "arguments": {...}}')
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        return ParsedToolCall(name, arguments, "step_audio", _check_arguments(arguments))
    return ParsedToolCall(name, json.dumps(arguments), "step_audio", _check_arguments(json.dumps(arguments)))


def parse_call_body(body: str) -> ParsedToolCall:
    """The inside of ``<tool_call>...</tool_call>``: ``function``, the name, the JSON arguments.

    A body that is a JSON object instead is the Hermes/Qwen form (what models given ``tools``
    through their own chat template write): ``{"name": "get_weather", "arguments": {"city": "Paris"}}``.
    """
    if body.strip().startswith("{"):
        return _parse_json_body(body.strip())
    lines = body.strip().split("\n", 2)
    if len(lines) < 2 or lines[0].strip() != CALL_KIND:
        return ParsedToolCall(
            "", body, "step_audio", f"expected '{CALL_KIND}', a name and JSON arguments on separate lines"
        )
    name = lines[1].strip()
    arguments = lines[2].strip() if len(lines) == 3 else ""
    if not name or any(ch.isspace() for ch in name):
        return ParsedToolCall(name, arguments, "step_audio", f"bad tool name {name!r}")
    return ParsedToolCall(name, arguments, "step_audio", _check_arguments(arguments))


def _open_prefix_len(text: str) -> int:
    """Length of the longest tail of ``text`` that could still grow into ``<tool_call>``."""
    for size in range(min(len(text), len(CALL_OPEN) - 1), 0, -1):
        if CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


@dataclass
class ToolCallTextFilter:
    """Separates speakable text from ``<tool_call>`` spans in streamed text, chunking-independent."""

    _buffer: str = ""
    _in_call: bool = False

    def feed(self, text: str) -> list[str | ParsedToolCall]:
        """Speakable text and completed calls, in stream order; a possible tag start is held back."""
        self._buffer += text
        out: list[str | ParsedToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CALL_CLOSE)
                if end < 0:
                    return out
                out.append(parse_call_body(self._buffer[:end]))
                self._buffer = self._buffer[end + len(CALL_CLOSE) :]
                self._in_call = False
                continue
            start = self._buffer.find(CALL_OPEN)
            if start < 0:
                keep = _open_prefix_len(self._buffer)
                speakable = self._buffer[: len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep :]
                if speakable:
                    out.append(speakable)
                return out
            if start:
                out.append(self._buffer[:start])
            self._buffer = self._buffer[start + len(CALL_OPEN) :]
            self._in_call = True

    def finish(self) -> list[str | ParsedToolCall]:
        """End of stream: a held-back tail is text; an unterminated call is a malformed call."""
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            self._in_call = False
            body = rest.strip()
            return [ParsedToolCall("", body, "step_audio", f"the stream ended inside {CALL_OPEN} (no {CALL_CLOSE})")]
        return [rest] if rest else []


@dataclass
class _PartialCall:
    name: str = ""
    arguments: str = ""


@dataclass
class OpenAiToolCallAssembler:
    """Accumulates OpenAI ``tool_calls`` fragments; the calls are complete when the stream ends."""

    _calls: dict[int, _PartialCall] = field(default_factory=dict)

    def feed(self, chunk: ToolCallChunk) -> None:
        partial = self._calls.setdefault(chunk.index, _PartialCall())
        # A name may come in pieces before the arguments; llama-cpp-python's server repeats the whole
        # name beside every piece of the arguments, which is a repeat, not more of the name.
        if not (partial.arguments and chunk.name == partial.name):
            partial.name += chunk.name
        partial.arguments += chunk.arguments

    def finish(self) -> list[ParsedToolCall]:
        calls = []
        for _, partial in sorted(self._calls.items()):
            name = partial.name.strip()
            error = "the call has no function name" if not name else _check_arguments(partial.arguments)
            calls.append(ParsedToolCall(name, partial.arguments, "openai", error))
        self._calls.clear()
        return calls


@dataclass
class ToolCallStreamParser:
    """Both formats over one stream: text pieces and call fragments in, text and calls out."""

    text: ToolCallTextFilter = field(default_factory=ToolCallTextFilter)
    openai: OpenAiToolCallAssembler = field(default_factory=OpenAiToolCallAssembler)

    def feed(self, piece: StreamPiece) -> list[str | ParsedToolCall]:
        if isinstance(piece, ToolCallChunk):
            self.openai.feed(piece)
            return []
        return self.text.feed(piece)

    def finish(self) -> list[str | ParsedToolCall]:
        return [*self.text.finish(), *self.openai.finish()]


def parse_stream(pieces: Sequence[StreamPiece]) -> tuple[str, list[ParsedToolCall]]:
    """A whole stream at once: the speakable text and the calls (for tests and offline use)."""
    parser = ToolCallStreamParser()
    items = [item for piece in pieces for item in parser.feed(piece)] + parser.finish()
    text = "".join(item for item in items if isinstance(item, str))
    return text, [item for item in items if isinstance(item, ParsedToolCall)]


async def wait_on_clock(clock: Clock, future: asyncio.Future[Any], timeout_ms: float) -> bool:
    """Wait for ``future`` at most ``timeout_ms`` of session time; True if it is done by then.

    The future is left as it is (not cancelled), so the caller decides what a timeout means.
    """
    timer: asyncio.Future[Any] = asyncio.ensure_future(clock.sleep_ms(timeout_ms))
    waitables: list[asyncio.Future[Any]] = [future, timer]
    try:
        await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    return future.done()
