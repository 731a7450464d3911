"""Scripted engines: timing from a scenario, no models. For the simulator and tests only.

Each takes its latencies from the scenario's engine models and sleeps on the
session clock, so under the virtual clock a whole conversation replays in
milliseconds, deterministically for a seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from duplexer.actors.engines import Message
from duplexer.actors.tool_calls import StreamPiece, ToolCallChunk, call_text
from duplexer.actors.tool_registry import Tool
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import FRAME_MS

NOISE_FLOOR_PROBABILITY = 0.02


@dataclass(frozen=True)
class SpeechSpan:
    """A stretch of user-side sound: speech with words, or a noise burst with none."""

    start_ms: float
    end_ms: float
    words: tuple[tuple[float, str], ...] = ()  # (start_ms, word)
    probability: float = 0.95
    kind: str = "speech"


@dataclass
class SpeechTimeline:
    """What the simulated user has said so far; scripted VAD and ASR read it as their 'audio'."""

    spans: list[SpeechSpan] = field(default_factory=list)

    def add(self, span: SpeechSpan) -> None:
        self.spans.append(span)

    def probability_at(self, t_ms: float) -> float:
        best = NOISE_FLOOR_PROBABILITY
        for span in reversed(self.spans):
            if span.start_ms <= t_ms < span.end_ms:
                best = max(best, span.probability)
            elif span.end_ms < t_ms - 60_000:
                break
        return best

    def words_between(self, start_ms: float, end_ms: float) -> list[str]:
        return [
            word for span in self.spans for word_start, word in span.words if start_ms - FRAME_MS <= word_start < end_ms
        ]


def jittered(rng: random.Random, mean_ms: float, jitter: float) -> float:
    """A latency around ``mean_ms``; ``jitter`` is the relative spread (0 = exact)."""
    if jitter <= 0 or mean_ms <= 0:
        return mean_ms
    return max(0.0, rng.gauss(mean_ms, mean_ms * jitter))


class ScriptedVad:
    """Speech probability read from the timeline at the frame's midpoint."""

    def __init__(self, timeline: SpeechTimeline) -> None:
        self.timeline = timeline

    def speech_probability(self, pcm: bytes, frame_start_ms: float) -> float:
        return self.timeline.probability_at(frame_start_ms + FRAME_MS / 2)


class ScriptedAsr:
    """Returns the words spoken in the segment after a latency."""

    def __init__(
        self,
        timeline: SpeechTimeline,
        clock: Clock,
        rng: random.Random,
        final_latency_ms: float = 150.0,
        partial_latency_ms: float = 60.0,
        jitter: float = 0.0,
    ) -> None:
        self.timeline, self.clock, self.rng = timeline, clock, rng
        self.final_latency_ms, self.partial_latency_ms, self.jitter = (
            final_latency_ms,
            partial_latency_ms,
            jitter,
        )

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str:
        latency = self.final_latency_ms if final else self.partial_latency_ms
        await self.clock.sleep_ms(jittered(self.rng, latency, self.jitter))
        return " ".join(self.timeline.words_between(start_ms, end_ms))


class CannedAsr:
    """Scripted ASR for real audio: the n-th segment's final transcript is ``texts[n]`` (then
    ``default``). Segments are told apart by their start, so a final asked for twice (an early one
    the VAD's stop did not confirm, then the real one) gets the same text."""

    def __init__(
        self, clock: Clock, texts: Sequence[str] = (), default: str = "hello", final_latency_ms: float = 150.0
    ) -> None:
        self.clock, self.texts, self.default = clock, list(texts), default
        self.final_latency_ms = final_latency_ms
        self.segments: dict[float, int] = {}

    @property
    def finals(self) -> int:
        """Segments given a final transcript so far."""
        return len(self.segments)

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str:
        await self.clock.sleep_ms(self.final_latency_ms if final else 0.0)
        if not final:
            return ""
        index = self.segments.setdefault(start_ms, len(self.segments))
        return self.texts[index] if index < len(self.texts) else self.default


def echo_reply(user_text: str) -> str:
    return f"You said {user_text.rstrip('?.!')}. That is a good point, and here is a short answer."


class ScriptedLlm:
    """Streams a scripted reply word by word after a time to first token."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        ttft_ms: float = 250.0,
        tokens_per_s: float = 40.0,
        jitter: float = 0.0,
        reply_for: Callable[[str], str] = echo_reply,
    ) -> None:
        self.clock, self.rng = clock, rng
        self.ttft_ms, self.tokens_per_s, self.jitter = ttft_ms, tokens_per_s, jitter
        self.reply_for = reply_for
        self.calls: list[str] = []

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        user_text = messages[-1][1] if messages else ""
        self.calls.append(reply_id)
        await self.clock.sleep_ms(jittered(self.rng, self.ttft_ms, self.jitter))
        words = self.reply_for(user_text).split()
        for i, word in enumerate(words):
            if i:
                await self.clock.sleep_ms(1000.0 / self.tokens_per_s)
            yield word if i == 0 else " " + word


class ScriptedTts:
    """Silent PCM whose length follows the text; rendered at ``rtf`` after a first-chunk latency."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        first_chunk_ms: float = 120.0,
        rtf: float = 0.2,
        ms_per_char: float = 65.0,
        chunk_ms: float = 200.0,
        sample_rate_hz: int = 16_000,
        jitter: float = 0.0,
    ) -> None:
        self.clock, self.rng = clock, rng
        self.first_chunk_ms, self.rtf, self.ms_per_char = first_chunk_ms, rtf, ms_per_char
        self.chunk_ms, self.sample_rate_hz, self.jitter = chunk_ms, sample_rate_hz, jitter

    renderable_instructions = frozenset({"slow", "fast"})

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        rate = 1.25 if "slow" in instructions else 0.8 if "fast" in instructions else 1.0
        remaining_ms = len(text) * self.ms_per_char * rate
        await self.clock.sleep_ms(jittered(self.rng, self.first_chunk_ms, self.jitter))
        first = True
        while remaining_ms > 0:
            piece_ms = min(self.chunk_ms, remaining_ms)
            if not first:
                await self.clock.sleep_ms(piece_ms * self.rtf)
            first = False
            remaining_ms -= piece_ms
            yield bytes(2 * int(self.sample_rate_hz * piece_ms / 1000))


# ------------------------------------------------------------------ tool calls

CALL_TEXT_CHUNK_CHARS = 4
"""Scripted tool-call text streams in pieces this long, about one token each."""


@dataclass(frozen=True)
class ScriptedToolReply:
    """A scripted reply that calls a tool: the preface, the call as the model writes it, the continuation."""

    preface: str
    name: str
    arguments: str = "{}"
    then: str = ""
    call_format: str = "step_audio"
    """step_audio: ``<tool_call>`` text in the stream; openai: call fragments beside it."""
    raw: str | None = None
    """Exact text written instead of a well-formed call (to script malformed calls)."""


def _last_user_text(messages: Sequence[Message]) -> str:
    return next((text for role, text in reversed(messages) if role == "user"), "")


class ScriptedToolLlm:
    """Like :class:`ScriptedLlm`, but a reply may call a tool and continue once the result is in.

    A continuation (the prompt ends with a tool message) answers after ``continuation_ttft_ms``:
    its prompt is the previous one plus the result, so a prefix cache makes that short.
    """

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        ttft_ms: float = 250.0,
        tokens_per_s: float = 40.0,
        jitter: float = 0.0,
        reply_for: Callable[[str], str | ScriptedToolReply] = echo_reply,
        continuation_ttft_ms: float | None = None,
    ) -> None:
        self.clock, self.rng = clock, rng
        self.ttft_ms, self.tokens_per_s, self.jitter = ttft_ms, tokens_per_s, jitter
        self.reply_for = reply_for
        self.continuation_ttft_ms = ttft_ms if continuation_ttft_ms is None else continuation_ttft_ms
        self.calls: list[str] = []

    def _pieces(self, reply: str | ScriptedToolReply, continuing: bool) -> Sequence[StreamPiece]:
        if isinstance(reply, str):
            return [] if continuing else _words(reply)
        if continuing:
            return _words(reply.then)
        pieces: list[StreamPiece] = [*_words(reply.preface)]
        if reply.raw is not None:
            pieces += _chunks(reply.raw)
        elif reply.call_format == "openai":
            args = _chunks(reply.arguments)
            pieces.append(ToolCallChunk(index=0, id="call_0", name=reply.name))
            pieces += [ToolCallChunk(index=0, arguments=part) for part in args]
        else:
            pieces += _chunks(call_text(reply.name, reply.arguments))
        return pieces

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[StreamPiece]:
        continuing = bool(messages) and messages[-1][0] == "tool"
        self.calls.append(reply_id)
        ttft_ms = self.continuation_ttft_ms if continuing else self.ttft_ms
        await self.clock.sleep_ms(jittered(self.rng, ttft_ms, self.jitter))
        for i, piece in enumerate(self._pieces(self.reply_for(_last_user_text(messages)), continuing)):
            if i:
                await self.clock.sleep_ms(1000.0 / self.tokens_per_s)
            yield piece


def _words(text: str) -> list[str]:
    return [word if i == 0 else " " + word for i, word in enumerate(text.split())]


def _chunks(text: str) -> list[str]:
    return [text[i : i + CALL_TEXT_CHUNK_CHARS] for i in range(0, len(text), CALL_TEXT_CHUNK_CHARS)]


@dataclass(frozen=True)
class ScriptedToolBehaviour:
    """How a scripted tool answers one call: after ``latency_ms``, ``result`` or (if set) ``error``."""

    arguments: dict[str, Any]
    latency_ms: float
    result: Any = "ok"
    error: str | None = None
    jitter: float = 0.0


JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list,
    "object": dict,
}
"""JSON schema type names, as scenarios write them, and the Python types of tool parameters."""


class ScriptedToolbox:
    """Tools that answer from a script, on the session clock; records every call that really ran."""

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self.clock, self.rng = clock, rng
        self.behaviours: dict[str, list[ScriptedToolBehaviour]] = {}
        self.ran: list[tuple[str, dict[str, Any], float]] = []
        """(tool, arguments, start_ms) of every call that started."""

    def behave(self, name: str, behaviour: ScriptedToolBehaviour) -> None:
        self.behaviours.setdefault(name, []).append(behaviour)

    def tool(
        self,
        name: str,
        *,
        read_only: bool,
        timeout_ms: float,
        params: dict[str, str] | None = None,
    ) -> Tool:
        """A tool answering from this toolbox. Its schema: ``params`` (JSON type names), else the
        types of the first scripted call's arguments, all required."""
        if params is None:
            first = self.behaviours.get(name, [ScriptedToolBehaviour({}, 0.0)])[0].arguments
            params = {key: _json_type(value) for key, value in first.items()}
        fields = {key: (JSON_TYPES[kind], ..., "") for key, kind in params.items()}

        async def run(**arguments: Any) -> Any:
            self.ran.append((name, arguments, self.clock.now_ms()))
            behaviour = self._match(name, arguments)
            await self.clock.sleep_ms(jittered(self.rng, behaviour.latency_ms, behaviour.jitter))
            if behaviour.error is not None:
                raise RuntimeError(behaviour.error)
            return behaviour.result

        return Tool.from_fields(name, run, fields, read_only=read_only, timeout_ms=timeout_ms)

    def _match(self, name: str, arguments: dict[str, Any]) -> ScriptedToolBehaviour:
        options = self.behaviours.get(name) or [ScriptedToolBehaviour({}, 0.0)]
        wanted = json.dumps(arguments, sort_keys=True)
        return next((b for b in options if json.dumps(b.arguments, sort_keys=True) == wanted), options[-1])


def _json_type(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "array", "object"):
        python_type = JSON_TYPES[kind]
        if isinstance(value, python_type) and not (kind in ("integer", "number") and isinstance(value, bool)):
            return kind
    return "string"
