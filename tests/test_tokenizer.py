"""The tokenizer actor: real speech in, whole 2:3 groups of Step-Audio ids out, in real time."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.actors.tokenizer import TokenizerActor, TokenizerParams, ids_between
from duplexer.actors.tokenizer_engines import (
    LINGUISTIC_TOKEN_MS,
    SEMANTIC_TOKEN_MS,
    CodeArray,
    LogMelKMeansTestTokenizer,
)
from duplexer.kernels import deinterleave, interleave
from duplexer.kernels.audio import float_to_pcm16, pcm16_to_float
from duplexer.kernels.tokens import (
    AUDIO_ID_END,
    GROUP_DURATION_MS,
    GROUP_SIZE,
    LINGUISTIC_ID_OFFSET,
    LINGUISTIC_PER_GROUP,
    SEMANTIC_ID_OFFSET,
    SEMANTIC_PER_GROUP,
)
from duplexer.protocols.wav import read_wav
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    AudioTokens,
    ErrorEvent,
    StateChanged,
)
from duplexer.runtime.session import Session
from tests.conftest import SHARED

VAP = SHARED / "data" / "vap_phrases"
needs_vap = pytest.mark.skipif(
    not (VAP / "audio").is_dir(),
    reason=f"VAP phrase recordings not found at {VAP} (shared data beside the repo)",
)
SAMPLES_PER_MS = INPUT_SAMPLE_RATE_HZ // 1000


@functools.cache
def speech(seconds: float) -> npt.NDArray[np.float32]:
    """``seconds`` of real speech at 16 kHz: VAP phrases of several voices, back to back, PCM16-exact."""
    wanted = int(seconds * INPUT_SAMPLE_RATE_HZ)
    parts, total = [], 0
    for path in sorted((VAP / "audio").glob("*.wav"))[::7]:
        parts.append(pcm16_to_float(read_wav(path, INPUT_SAMPLE_RATE_HZ)))
        total += len(parts[-1])
        if total >= wanted:
            break
    return np.concatenate(parts)[:wanted]


@functools.cache
def engine() -> LogMelKMeansTestTokenizer:
    return LogMelKMeansTestTokenizer()


def offline_ids(samples: npt.NDArray[np.float32], params: TokenizerParams) -> tuple[CodeArray, CodeArray]:
    """What the stream should carry: each codebook over all whole segments in one call, then (ling, sem)."""
    ling_n = len(samples) // (params.linguistic_chunk_ms * SAMPLES_PER_MS) * params.linguistic_chunk_ms
    sem_n = len(samples) // (params.semantic_window_ms * SAMPLES_PER_MS) * params.semantic_window_ms
    ling = engine().open_linguistic(240).encode_now(samples[: ling_n * SAMPLES_PER_MS])
    sem = engine().open_semantic(240).encode_now(samples[: sem_n * SAMPLES_PER_MS])
    return ling, sem


@dataclass
class Run:
    tokens: list[AudioTokens]
    errors: list[ErrorEvent]
    actor: TokenizerActor
    engine_ms: float
    wall_s: float

    @property
    def ids(self) -> list[int]:
        return [i for event in self.tokens for i in event.ids]


async def stream(
    samples: npt.NDArray[np.float32],
    params: TokenizerParams | None = None,
    frame_sizes: Sequence[int] | None = None,
    real_time: bool = False,
    engine_override: object | None = None,
    before: Sequence[object] = (),
    sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ,
) -> Run:
    """Publish ``samples`` as AudioFrames (20 ms unless ``frame_sizes``) to a tokenizer actor; collect."""
    clock = LoopClock()
    pcm = float_to_pcm16(samples)
    sizes = list(frame_sizes) if frame_sizes is not None else []
    if not sizes:
        sizes = [FRAME_SAMPLES] * (len(samples) // FRAME_SAMPLES)
    started = time.perf_counter()
    async with Session("tok", clock=clock) as session:
        sub = session.bus.subscribe("test", (AudioTokens, ErrorEvent), maxsize=1_000_000)
        actor = TokenizerActor(session.ctx, engine_override or engine(), params)  # type: ignore[arg-type]
        session.add(actor)
        for event in before:
            session.bus.publish(event)  # type: ignore[arg-type]
        position = 0
        for seq, size in enumerate(sizes):
            frame = pcm[2 * position : 2 * (position + size)]
            position += size
            if real_time:  # a frame is sent once its audio has been spoken
                await clock.sleep_ms(1000.0 * position / sample_rate_hz - clock.now_ms())
            session.ctx.emit(AudioFrame, pcm=frame, sample_rate_hz=sample_rate_hz, seq=seq)
            if not real_time and seq % 10 == 0:
                await asyncio.sleep(0)
        await clock.sleep_ms(300.0)
        wall_s = time.perf_counter() - started
        received = []
        while (event := sub.get_nowait()) is not None:
            received.append(event)
    engine_ms = sum(sum(values) for key, values in session.metrics.series.items() if key.startswith("tokenizer."))
    return Run(
        [e for e in received if isinstance(e, AudioTokens)],
        [e for e in received if isinstance(e, ErrorEvent)],
        actor,
        engine_ms,
        wall_s,
    )


def assert_whole_groups_in_order(run: Run) -> None:
    """Every event: whole groups, 2 linguistic then 3 semantic ids, contiguous spans and numbering."""
    next_group, next_ms = 0, 0.0
    for event in run.tokens:
        assert len(event.ids) % GROUP_SIZE == 0 and event.ids
        for slot, token_id in enumerate(event.ids):
            is_linguistic_slot = slot % GROUP_SIZE < LINGUISTIC_PER_GROUP
            assert (token_id < SEMANTIC_ID_OFFSET) == is_linguistic_slot
            assert LINGUISTIC_ID_OFFSET <= token_id < AUDIO_ID_END
        n_groups = len(event.ids) // GROUP_SIZE
        assert event.first_group == next_group
        assert event.start_ms == next_ms
        assert event.end_ms == event.start_ms + n_groups * GROUP_DURATION_MS
        next_group += n_groups
        next_ms = event.end_ms


def expected_groups(duration_ms: int, params: TokenizerParams) -> int:
    """Whole groups in the audio both pipelines have tokenized (whole segments only)."""
    ling = duration_ms // params.linguistic_chunk_ms * (params.linguistic_chunk_ms // LINGUISTIC_TOKEN_MS)
    sem = duration_ms // params.semantic_window_ms * (params.semantic_window_ms // SEMANTIC_TOKEN_MS)
    return min(ling // LINGUISTIC_PER_GROUP, sem // SEMANTIC_PER_GROUP)


@needs_vap
def test_ten_seconds_of_speech_stream_in_real_time_as_whole_2_3_groups() -> None:
    audio = speech(10.0)
    params = TokenizerParams()
    run = asyncio.run(stream(audio, params, real_time=True))

    assert run.errors == []
    assert_whole_groups_in_order(run)
    # 41 whole 240 ms chunks: 164 linguistic + 246 semantic codes = 82 groups covering 9840 ms;
    # the last 160 ms wait for more audio.
    assert expected_groups(10_000, params) == 82
    assert len(run.ids) == 82 * GROUP_SIZE
    assert run.tokens[-1].end_ms == 82 * GROUP_DURATION_MS
    ling, sem = offline_ids(audio, params)
    assert run.ids == interleave(ling, sem).tolist()
    # Each group is published soon after the chunk holding it has been spoken.
    lag_ms = [event.ts_ms - event.end_ms for event in run.tokens]
    assert max(lag_ms) < params.linguistic_chunk_ms + 1000.0
    # Engine time, measured inside the actor, is a small fraction of the audio's duration.
    assert run.engine_ms < 0.5 * 10_000
    assert run.wall_s < 10.0 + 5.0


@needs_vap
@pytest.mark.parametrize("window_ms", [120, 200, 240, 480, 1000])
def test_groups_carry_over_chunk_boundaries_for_any_semantic_window(window_ms: int) -> None:
    audio = speech(6.0)
    params = TokenizerParams(semantic_window_ms=window_ms)
    run = run_virtual(stream(audio, params))
    assert isinstance(run, Run)

    assert run.errors == []
    assert_whole_groups_in_order(run)
    groups = expected_groups(6_000, params)
    assert len(run.ids) == groups * GROUP_SIZE
    ling, sem = offline_ids(audio, params)
    assert run.ids == interleave(ling[: 2 * groups], sem[: 3 * groups]).tolist()
    # What did not make a whole group is carried, not padded or dropped.
    assert run.actor.interleaver.pending == (len(ling) - 2 * groups, len(sem) - 3 * groups)
    got_ling, got_sem = deinterleave(run.ids)
    assert got_ling.tolist() == ling[: 2 * groups].tolist() and got_sem.tolist() == sem[: 3 * groups].tolist()


@st.composite
def frame_cuts(draw: st.DrawFn, total: int) -> list[int]:
    """Frame sizes in samples that add up to ``total``: one whole frame, or cut anywhere (1 sample up)."""
    cuts = sorted(draw(st.sets(st.integers(1, total - 1), max_size=80)))
    edges = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(edges)]


@needs_vap
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_frame_chunking_yields_the_same_token_stream(data: st.DataObject) -> None:
    audio = speech(6.0)[: 2 * INPUT_SAMPLE_RATE_HZ]
    params = TokenizerParams(semantic_window_ms=data.draw(st.sampled_from([120, 200, 240, 360])))
    reference = run_virtual(stream(audio, params))
    sizes = data.draw(frame_cuts(len(audio)))
    chunked = run_virtual(stream(audio, params, frame_sizes=sizes))
    assert isinstance(reference, Run) and isinstance(chunked, Run)
    assert reference.ids and chunked.ids == reference.ids
    assert_whole_groups_in_order(chunked)
    assert chunked.tokens[-1].end_ms == reference.tokens[-1].end_ms


@needs_vap
def test_events_carry_the_controllers_current_turn_id() -> None:
    turn = StateChanged(session_id="tok", ts_ms=0.0, turn_id=3, old_state="silence", new_state="user", reason="x")
    run = run_virtual(stream(speech(6.0)[:8000], before=[turn]))
    assert isinstance(run, Run)
    assert run.tokens and {e.turn_id for e in run.tokens} == {3}


class FailingOnce:
    """The test engine, whose linguistic stream raises on its third segment."""

    name = "failing"

    def __init__(self) -> None:
        self.inner = engine()
        self.segments = 0

    def open_linguistic(self, segment_ms: int) -> object:
        outer, stream = self, self.inner.open_linguistic(segment_ms)

        class Stream:
            async def encode(self, samples: npt.NDArray[np.float32]) -> CodeArray:
                outer.segments += 1
                if outer.segments == 3:
                    raise RuntimeError("GPU fell off the bus")
                return stream.encode_now(samples)

        return Stream()

    def open_semantic(self, segment_ms: int) -> object:
        return self.inner.open_semantic(segment_ms)


@needs_vap
def test_an_engine_failure_is_reported_and_a_new_stream_starts_at_the_next_audio() -> None:
    run = run_virtual(stream(speech(6.0)[: 3 * INPUT_SAMPLE_RATE_HZ], engine_override=FailingOnce()))
    assert isinstance(run, Run)

    assert len(run.errors) == 1
    message = run.errors[0].message
    assert "GPU fell off the bus" in message and "no tokens for user audio 480-" in message
    first = [e for e in run.tokens if e.stream_id == 0]
    second = [e for e in run.tokens if e.stream_id == 1]
    assert first and second
    assert first[-1].end_ms == 480.0  # two chunks made it before the failure
    assert second[0].first_group == 0 and second[0].start_ms > first[-1].end_ms
    assert all(len(e.ids) % GROUP_SIZE == 0 for e in run.tokens)


class OutOfRange:
    """An engine whose semantic codes are out of the 4096-code range."""

    name = "broken"

    def open_linguistic(self, segment_ms: int) -> object:
        return engine().open_linguistic(segment_ms)

    def open_semantic(self, segment_ms: int) -> object:
        class Stream:
            async def encode(self, samples: npt.NDArray[np.float32]) -> CodeArray:
                return np.full(len(samples) // (SEMANTIC_TOKEN_MS * SAMPLES_PER_MS), 4096, dtype=np.int64)

        return Stream()


@needs_vap
def test_out_of_range_codes_are_reported_never_published() -> None:
    run = run_virtual(stream(speech(6.0)[:8000], engine_override=OutOfRange()))
    assert isinstance(run, Run)
    assert run.tokens == []
    assert run.errors and "semantic engine returned code 4096 outside 0..4095" in run.errors[0].message


@needs_vap
def test_frames_at_another_rate_are_resampled_and_reported_once() -> None:
    from duplexer.kernels.audio import resample

    audio_48k = resample(speech(6.0)[: 2 * INPUT_SAMPLE_RATE_HZ], INPUT_SAMPLE_RATE_HZ, 48_000)
    run = run_virtual(stream(audio_48k, frame_sizes=[960] * 100, sample_rate_hz=48_000))
    assert isinstance(run, Run)
    assert len(run.errors) == 1 and "48000 Hz" in run.errors[0].message
    assert len(run.ids) == expected_groups(2000, TokenizerParams()) * GROUP_SIZE


@needs_vap
def test_an_odd_byte_frame_is_reported_and_the_stream_goes_on() -> None:
    audio = speech(6.0)[:8000]
    reference = run_virtual(stream(audio, frame_sizes=[3840, 4160]))
    assert isinstance(reference, Run) and reference.errors == [] and reference.ids

    async def with_a_stray_byte() -> list[object]:
        async with Session("tok", clock=LoopClock()) as session:
            sub = session.bus.subscribe("test", (AudioTokens, ErrorEvent), maxsize=10_000)
            session.add(TokenizerActor(session.ctx, engine()))
            pcm = float_to_pcm16(audio)
            session.ctx.emit(AudioFrame, pcm=pcm[:7681], sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=0)
            session.ctx.emit(AudioFrame, pcm=pcm[7680:], sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=1)
            await asyncio.sleep(0.05)
            return list(iter(sub.get_nowait, None))

    received = run_virtual(with_a_stray_byte())
    assert isinstance(received, list)
    errors = [e for e in received if isinstance(e, ErrorEvent)]
    tokens = [e for e in received if isinstance(e, AudioTokens)]
    assert len(errors) == 1 and "odd byte count (7681); its last byte is dropped" in errors[0].message
    assert [i for e in tokens for i in e.ids] == reference.ids


def test_params_reject_segments_that_are_not_whole_tokens() -> None:
    with pytest.raises(ValueError, match="linguistic_chunk_ms must be a positive multiple of 60 ms"):
        TokenizerParams(linguistic_chunk_ms=250)
    with pytest.raises(ValueError, match="semantic_window_ms must be a positive multiple of 40 ms"):
        TokenizerParams(semantic_window_ms=100)


def test_ids_between_takes_every_group_overlapping_the_span() -> None:
    group = [65536, 65537, 66560, 66561, 66562]
    events = [
        AudioTokens(session_id="s", ts_ms=0, ids=tuple(group * 2), stream_id=0, first_group=0, start_ms=0, end_ms=240),
        AudioTokens(
            session_id="s",
            ts_ms=0,
            ids=tuple(group * 2),
            stream_id=0,
            first_group=2,
            start_ms=240,
            end_ms=480,
        ),
    ]
    assert ids_between(events, 0, 480) == group * 4
    assert ids_between(events, 130, 250) == group * 2  # groups 120-240 and 240-360
    assert ids_between(events, 480, 600) == []
