"""Tokenizer actor: user audio in, one stream of interleaved Step-Audio audio ids out.

Two pipelines run side by side on fixed-duration segments of the incoming 16 kHz frames:
linguistic on ``linguistic_chunk_ms`` chunks (240 ms, Paraformer's streaming chunk) and
semantic on ``semantic_window_ms`` windows. Each pipeline is its own task with its own queue,
so a slow model call in one never holds up the other (engines run model calls in threads).
Their codes meet in one :class:`~duplexer.kernels.StreamingInterleaver`, which emits only
complete 2:3 groups and carries the rest, so the 120 ms grouping survives every chunk
boundary. Each batch of completed groups is published as an :class:`AudioTokens` event.

Tokenization is continuous over the session's audio, not tied to VAD segments: every group
has a fixed place on the audio timeline (``start_ms`` + 120 ms per group), and a consumer
picks a turn's tokens by time with :func:`ids_between` (for example from
``VadSpeechStart.speech_start_ms`` to ``VadSpeechStop.speech_end_ms``). Events carry the
controller's current turn id, taken from its ``StateChanged`` events.

Bad input never stops the stream: frames at another sample rate are resampled and reported
once per rate, an odd trailing byte is dropped and reported, and a frame claiming a rate of
0 Hz or less is reported and skipped. If an engine call fails or returns an invalid code,
the actor reports which span of audio lost its tokens and starts a new stream (``stream_id``
+ 1) at the next audio. Audio shorter than one segment, and an incomplete group, wait for more
audio; they are not emitted when the session ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from duplexer.actors.tokenizer_engines import (
    LINGUISTIC_TOKEN_MS,
    SEMANTIC_TOKEN_MS,
    CodeStream,
    TokenizerEngine,
)
from duplexer.kernels import StreamingInterleaver, TokenStreamError
from duplexer.kernels.audio import pcm16_to_float, resample
from duplexer.kernels.tokens import (
    GROUP_DURATION_MS,
    GROUP_SIZE,
    LINGUISTIC_CODEBOOK_SIZE,
    SEMANTIC_CODEBOOK_SIZE,
)
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    AudioTokens,
    ErrorEvent,
    Event,
    StateChanged,
)

SAMPLES_PER_MS = INPUT_SAMPLE_RATE_HZ // 1000


@dataclass(frozen=True)
class TokenizerParams:
    linguistic_chunk_ms: int = 240
    """Linguistic segment length: Step-Audio's streaming Paraformer chunk (4 tokens)."""
    semantic_window_ms: int = 240
    """Semantic segment length; longer windows give a real model more context, at more latency."""

    def __post_init__(self) -> None:
        for name, value, token_ms in (
            ("linguistic_chunk_ms", self.linguistic_chunk_ms, LINGUISTIC_TOKEN_MS),
            ("semantic_window_ms", self.semantic_window_ms, SEMANTIC_TOKEN_MS),
        ):
            if value <= 0 or value % token_ms:
                raise ValueError(f"{name} must be a positive multiple of {token_ms} ms (one token), got {value}")


@dataclass
class _Pipeline:
    """One codebook's segmenter, queue and code stream."""

    kind: str
    codebook_size: int
    segment_samples: int
    stream: CodeStream
    pending: npt.NDArray[np.float32]
    queue: asyncio.Queue[tuple[int, npt.NDArray[np.float32]]]


class TokenizerActor(Actor):
    name = "tokenizer"
    subscribes = (AudioFrame, StateChanged)

    def __init__(self, ctx: SessionContext, engine: TokenizerEngine, params: TokenizerParams | None = None) -> None:
        super().__init__(ctx)
        self.engine = engine
        self.params = params or TokenizerParams()
        self.turn_id: int | None = None
        self.stream_id = 0
        self.origin_ms: float | None = None
        """Audio time of the current stream's first sample; None until audio arrives."""
        self.samples_in = 0
        """Samples received in the current stream."""
        self.groups_out = 0
        """Groups emitted in the current stream."""
        self.reported_rates: set[int] = set()
        self.pipelines = (
            self._pipeline("linguistic", self.params.linguistic_chunk_ms),
            self._pipeline("semantic", self.params.semantic_window_ms),
        )
        self.interleaver = StreamingInterleaver()
        self._workers: dict[str, asyncio.Task[None]] = {}

    def _pipeline(self, kind: str, segment_ms: int) -> _Pipeline:
        linguistic = kind == "linguistic"
        open_stream = self.engine.open_linguistic if linguistic else self.engine.open_semantic
        return _Pipeline(
            kind,
            LINGUISTIC_CODEBOOK_SIZE if linguistic else SEMANTIC_CODEBOOK_SIZE,
            segment_ms * SAMPLES_PER_MS,
            open_stream(segment_ms),
            np.empty(0, np.float32),
            asyncio.Queue(),
        )

    async def on_start(self) -> None:
        for p in self.pipelines:
            worker = self._workers.get(p.kind)
            if worker is None or worker.done():
                self._workers[p.kind] = self.spawn(self._work(p), p.kind)

    async def handle(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.turn_id = event.turn_id
        elif isinstance(event, AudioFrame):
            if event.sample_rate_hz <= 0:
                self.emit(
                    ErrorEvent,
                    turn_id=self.turn_id,
                    source=self.name,
                    message=f"audio frame {event.seq} claims {event.sample_rate_hz} Hz; it cannot be tokenized",
                )
                return
            samples = self._samples(event)
            if self.origin_ms is None:
                self.origin_ms = event.seq * event.duration_ms
            self.samples_in += samples.shape[0]
            for p in self.pipelines:
                buffered = np.concatenate((p.pending, samples))
                n_segments = buffered.shape[0] // p.segment_samples
                for i in range(n_segments):
                    segment = buffered[i * p.segment_samples : (i + 1) * p.segment_samples]
                    p.queue.put_nowait((self.stream_id, segment))
                p.pending = buffered[n_segments * p.segment_samples :]

    def _samples(self, frame: AudioFrame) -> npt.NDArray[np.float32]:
        """The frame as 16 kHz float samples; other rates are resampled and reported once."""
        pcm = frame.pcm
        if len(pcm) % 2:
            self.emit(
                ErrorEvent,
                turn_id=self.turn_id,
                source=self.name,
                message=f"audio frame {frame.seq} has an odd byte count ({len(pcm)}); its last byte "
                "is dropped (frames must be whole PCM16 samples)",
            )
            pcm = pcm[:-1]
        samples = pcm16_to_float(pcm)
        rate = frame.sample_rate_hz
        if rate != INPUT_SAMPLE_RATE_HZ:
            if rate not in self.reported_rates:
                self.reported_rates.add(rate)
                self.emit(
                    ErrorEvent,
                    turn_id=self.turn_id,
                    source=self.name,
                    message=f"audio frames arrive at {rate} Hz; the tokenizer resamples them to "
                    f"{INPUT_SAMPLE_RATE_HZ} Hz frame by frame (resample at the transport instead)",
                )
            samples = resample(samples, rate, INPUT_SAMPLE_RATE_HZ)
        return samples

    async def _work(self, p: _Pipeline) -> None:
        """Encode this pipeline's segments in order and feed their codes to the interleaver."""
        while True:
            stream_id, segment = await p.queue.get()
            if stream_id != self.stream_id:
                continue  # queued before a restart: its stream is gone
            started = time.perf_counter()
            try:
                codes = await p.stream.encode(segment)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stream_id == self.stream_id:
                    self._restart(f"{p.kind} engine failed: {type(exc).__name__}: {exc}")
                continue
            self.ctx.metrics.observe("tokenizer.engine_ms", 1000.0 * (time.perf_counter() - started), pipeline=p.kind)
            if stream_id != self.stream_id:
                continue
            codes = np.asarray(codes, dtype=np.int64)
            bad = codes[(codes < 0) | (codes >= p.codebook_size)]
            if bad.size:
                self._restart(f"{p.kind} engine returned code {bad[0]} outside 0..{p.codebook_size - 1}")
                continue
            try:
                if p.kind == "linguistic":
                    ids = self.interleaver.push(ling_codes=codes)
                else:
                    ids = self.interleaver.push(sem_codes=codes)
            except TokenStreamError as exc:
                self._restart(f"{p.kind} engine returned an invalid code: {exc}")
                continue
            if ids.size:
                self._publish(ids)

    def _publish(self, ids: npt.NDArray[np.int64]) -> None:
        assert self.origin_ms is not None and ids.size % GROUP_SIZE == 0
        n_groups = ids.size // GROUP_SIZE
        start_ms = self.origin_ms + self.groups_out * GROUP_DURATION_MS
        self.emit(
            AudioTokens,
            turn_id=self.turn_id,
            ids=tuple(ids.tolist()),
            stream_id=self.stream_id,
            first_group=self.groups_out,
            start_ms=start_ms,
            end_ms=start_ms + n_groups * GROUP_DURATION_MS,
        )
        self.groups_out += n_groups
        self.ctx.metrics.incr("tokenizer.groups", n_groups)

    def _restart(self, reason: str) -> None:
        """Report the audio whose tokens are lost and start a new stream at the next audio."""
        origin = self.origin_ms or 0.0
        lost_from_ms = origin + self.groups_out * GROUP_DURATION_MS
        lost_to_ms = origin + self.samples_in / SAMPLES_PER_MS
        self.ctx.metrics.incr("tokenizer.restarts")
        self.emit(
            ErrorEvent,
            turn_id=self.turn_id,
            source=self.name,
            message=f"audio tokenizer: {reason}; no tokens for user audio "
            f"{lost_from_ms:.0f}-{lost_to_ms:.0f} ms; a new token stream starts at {lost_to_ms:.0f} ms",
        )
        self.stream_id += 1
        self.origin_ms = lost_to_ms
        self.samples_in = 0
        self.groups_out = 0
        self.interleaver = StreamingInterleaver()
        self.pipelines[0].stream = self.engine.open_linguistic(self.params.linguistic_chunk_ms)
        self.pipelines[1].stream = self.engine.open_semantic(self.params.semantic_window_ms)
        for p in self.pipelines:
            p.pending = np.empty(0, np.float32)


def ids_between(events: Iterable[AudioTokens], start_ms: float, end_ms: float) -> list[int]:
    """Ids of every group whose 120 ms of audio overlaps ``start_ms``..``end_ms``, in stream order.

    This is how a turn's audio becomes the ``<audio_N>`` part of a prompt.
    """
    ids: list[int] = []
    for event in events:
        for g in range(len(event.ids) // GROUP_SIZE):
            group_start_ms = event.start_ms + g * GROUP_DURATION_MS
            if group_start_ms < end_ms and group_start_ms + GROUP_DURATION_MS > start_ms:
                ids.extend(event.ids[g * GROUP_SIZE : (g + 1) * GROUP_SIZE])
    return ids
