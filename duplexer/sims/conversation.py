"""One conversation driven from Python: audio in, events and the bot's audio out.

WebRTC and MQTT carry a caller's audio to a session over the network; a program that already holds
the audio (a file, a test, a notebook, another framework's media pipeline) hands it over here. It is
the same session those transports run, not a second runtime: a local :class:`~duplexer.runtime.session.Session`
with :func:`~duplexer.actors.pipeline.start_pipeline`'s actors, controller and engines, its microphone
fed by :meth:`Conversation.feed`.

The microphone keeps time as a real one does: it sends one 20 ms frame every 20 ms of the session's
clock, the fed audio while there is some and silence otherwise, because the controller measures
pauses and ends of turns in that audio. On the wall clock a fed file plays in real time; inside
:func:`~duplexer.runtime.clock.run_virtual` the same conversation runs on virtual time, as fast as
the engines compute, with the same timings.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import Engines
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.tool_registry import ToolRegistry
from duplexer.kernels.audio import resample_pcm16
from duplexer.policies.params import PolicyParams
from duplexer.protocols.engine_factory import EngineFactory, scripted_engines
from duplexer.runtime.actor import Actor
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AsrFinal,
    AudioFrame,
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    ErrorEvent,
    Event,
    HistoryUpdated,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    SpeakRequest,
    StartReply,
    StateChanged,
    ToolCallRequested,
    ToolResult,
    VadSpeechStart,
    VadSpeechStop,
)
from duplexer.runtime.session import Session
from duplexer.sims.live import KeepingSink
from duplexer.sims.simulator import RecordingSink

E = TypeVar("E", bound=Event)

CONVERSATION_EVENTS: tuple[type[Event], ...] = (
    VadSpeechStart,
    VadSpeechStop,
    AsrFinal,
    EndOfTurnProbability,
    StateChanged,
    StartReply,
    CommitReply,
    CancelReply,
    PlayoutStarted,
    PlayoutDone,
    PlayoutStopped,
    HistoryUpdated,
    ToolCallRequested,
    ToolResult,
    ErrorEvent,
)
"""The events a conversation keeps by default: what was heard, what the controller decided, what
was played, and errors; not the per-frame and per-token ones (ask for those with ``events=``)."""
FRAME_BYTES = 2 * FRAME_SAMPLES
SILENT_FRAME = bytes(FRAME_BYTES)


class HeardAudio(KeepingSink):
    """The bot's audio as played, kept at the microphone's rate so the two tracks line up."""

    def __init__(self, session: Session) -> None:
        super().__init__(session.clock, INPUT_SAMPLE_RATE_HZ)

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        RecordingSink.write(self, pcm, sample_rate_hz, reply_id, ts_ms)
        self.pieces.append((ts_ms, resample_pcm16(pcm, sample_rate_hz, self.rate_hz)))


class Conversation:
    """A running session: :meth:`feed` it microphone audio, read :attr:`events`, :meth:`close` it.

    Use it as ``async with open_session(...) as conversation:``; leaving the block closes it. It keeps
    every event asked for and both sides' audio (about 2 MB a minute), for conversations of minutes.
    """

    def __init__(
        self, session: Session, actors: dict[str, Actor], sink: HeardAudio, kinds: Iterable[type[Event]]
    ) -> None:
        self.session = session
        self.actors = actors
        """The pipeline's actors by name (``controller``, ``vad``, ``asr``, ``llm``, ``tts``, ``playout`` ...)."""
        self.sink = sink
        self.events: list[Event] = []
        """Every kept event so far, in order."""
        self._arrived = asyncio.Event()
        self._pending = bytearray()
        self._fed = asyncio.Event()
        self._fed.set()
        self._user = bytearray()
        self._first_seq = 0
        self._closed = False
        self._subscription = session.bus.subscribe("conversation", tuple(kinds), maxsize=1_000_000)
        session.supervisor.spawn(self._record, "conversation-events")
        session.supervisor.spawn(self._microphone, "conversation-mic")

    @property
    def now_ms(self) -> float:
        """The session's clock: event times (``ts_ms``) are on it."""
        return self.session.clock.now_ms()

    async def _record(self) -> None:
        async for event in self._subscription:
            self.events.append(event)
            self._arrived.set()

    async def _microphone(self) -> None:
        clock = self.session.clock
        seq = self._first_seq = int(clock.now_ms() // FRAME_MS) + 1  # frames are numbered by session time
        await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())
        held = False
        while True:
            if len(self._pending) >= FRAME_BYTES or (self._pending and held):
                frame = bytes(self._pending[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0")
                del self._pending[:FRAME_BYTES]
                held = False
            else:
                # A partial frame waits one tick for the rest of it (a stream cut finer than 20 ms then
                # plays 20 ms late, but whole); still partial a tick later, it is the end: padded.
                frame = SILENT_FRAME
                held = bool(self._pending)
            if len(self._pending) < FRAME_BYTES:
                self._fed.set()
            self._user += frame
            self.session.ctx.emit(AudioFrame, pcm=frame, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            seq += 1
            await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())

    async def feed(self, pcm: bytes) -> None:
        """Speak ``pcm`` (PCM16 mono at 16 kHz, any length) into the microphone, 20 ms a frame in
        session time; returns once every whole frame of it has been sent. Audio fed in pieces plays
        as one stream however it is cut: a piece's last partial frame waits for the next piece, and
        is completed with silence only if none comes within a frame's time."""
        if self._closed:
            raise RuntimeError("the conversation is closed")
        if len(pcm) % 2:
            raise ValueError("PCM16 audio has an even number of bytes")
        self._pending += pcm
        if len(self._pending) >= FRAME_BYTES:
            self._fed.clear()
            await self._fed.wait()

    async def listen(self, ms: float) -> None:
        """Let ``ms`` of session time pass with the microphone sending silence: the user says nothing."""
        await self.session.clock.sleep_ms(ms)

    async def wait_for(self, kind: type[E], timeout_ms: float = 30_000.0) -> E | None:
        """The first ``kind`` event kept from now on, or None if none comes within ``timeout_ms``
        of session time (the microphone sends silence meanwhile, so pending turns end)."""
        start = len(self.events)
        deadline = self.now_ms + timeout_ms
        while True:
            found = next((e for e in self.events[start:] if isinstance(e, kind)), None)
            if found is not None:
                return found
            remaining = deadline - self.now_ms
            if remaining <= 0:
                return None
            self._arrived.clear()
            await _first(self._arrived.wait(), self.session.clock.sleep_ms(remaining))

    def say(self, text: str, reply_id: str = "said") -> None:
        """Have the bot say ``text`` now if nobody is speaking (a greeting), without the LLM."""
        self.session.ctx.emit(SpeakRequest, reply_id=reply_id, text=text)

    def of_kind(self, kind: type[E]) -> list[E]:
        """The kept events of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def user_audio(self) -> np.ndarray:
        """What the microphone sent, PCM16 at 16 kHz from session time 0 (silence included)."""
        lead = np.zeros(self._first_seq * FRAME_SAMPLES, dtype="<i2")
        return np.concatenate([lead, np.frombuffer(bytes(self._user), dtype="<i2")])

    def bot_audio(self) -> np.ndarray:
        """What the bot played, PCM16 at 16 kHz on the same time line as :meth:`user_audio`."""
        return self.sink.track()

    async def close(self) -> None:
        """Stop every actor and engine task of the session; the kept events and audio stay readable."""
        if self._closed:
            return
        self._closed = True
        await asyncio.sleep(0)
        while (event := self._subscription.get_nowait()) is not None:
            self.events.append(event)
        await self.session.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _first(*awaitables: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def open_session(
    engines: EngineFactory | None = None,
    policy: PolicyParams | None = None,
    *,
    config: PipelineConfig | None = None,
    tools: ToolRegistry | None = None,
    system_prompt: str | None = None,
    events: Iterable[type[Event]] = CONVERSATION_EVENTS,
    session_id: str | None = None,
) -> Conversation:
    """Start a conversation on the running event loop and return it.

    ``engines`` builds the session's engines on its clock, playing into its sink, as every transport's
    do (default: :func:`~duplexer.protocols.engine_factory.scripted_engines`, model-free; the real
    models are :func:`~duplexer.protocols.engine_factory.real_engines`). ``policy`` is the turn-taking
    policy (default: the ``live`` preset); ``config`` sets every other actor's parameters (its own
    ``policy`` is replaced by ``policy`` when both are given). ``tools`` lets the LLM call them
    (docs/tools.md); ``system_prompt`` replaces the default one. ``events`` are the kinds kept in
    :attr:`Conversation.events`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "open_session needs a running event loop: call it in async code run by asyncio.run "
            "(the wall clock) or duplexer.run_virtual (virtual time)"
        ) from None
    session = Session(session_id=session_id)
    sink = HeardAudio(session)
    built: Engines = (engines or scripted_engines())(session.clock, sink)
    cfg = config or PipelineConfig()
    if policy is not None:
        cfg = dataclasses.replace(cfg, policy=policy)
    context = ContextManager(system_prompt) if system_prompt is not None else None
    actors = start_pipeline(session, built, cfg, context=context, tools=tools)
    return Conversation(session, actors, sink, events)
