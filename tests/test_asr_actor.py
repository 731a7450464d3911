"""The ASR actor: which audio each segment's final transcript is computed from."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.actors.asr import AsrActor, AsrParams
from duplexer.runtime.actor import SessionContext
from duplexer.runtime.bus import Bus
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_MS,
    INPUT_SAMPLE_RATE_HZ,
    AsrFinal,
    AudioFrame,
    Event,
    VadOffsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
)

S = "s"
SAMPLES_PER_FRAME = int(INPUT_SAMPLE_RATE_HZ * FRAME_MS / 1000)


class FrameNumbers:
    """An engine that hears which frames it was given: every sample of frame ``k`` has the value ``k``."""

    def __init__(self) -> None:
        self.finals: list[list[int]] = []

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str:
        samples = np.frombuffer(pcm, dtype="<i2")
        frames = [int(v) for v in samples[::SAMPLES_PER_FRAME]]
        if final:
            self.finals.append(frames)
        return f"{len(frames)} frames"


def frame(seq: int) -> AudioFrame:
    pcm = np.full(SAMPLES_PER_FRAME, seq, dtype="<i2").tobytes()
    return AudioFrame(session_id=S, ts_ms=seq * FRAME_MS, pcm=pcm, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)


def start(segment_id: int, at_frame: int) -> VadSpeechStart:
    return VadSpeechStart(
        session_id=S, ts_ms=0.0, segment_id=segment_id, probability=0.9, speech_start_ms=at_frame * FRAME_MS
    )


def stop(segment_id: int, at_frame: int) -> VadSpeechStop:
    return VadSpeechStop(
        session_id=S, ts_ms=0.0, segment_id=segment_id, probability=0.1, speech_end_ms=at_frame * FRAME_MS
    )


def drive(events: Sequence[Event], params: AsrParams | None = None) -> tuple[FrameNumbers, list[AsrFinal]]:
    engine = FrameNumbers()

    async def main() -> list[AsrFinal]:
        bus = Bus(S, LoopClock())
        out = bus.subscribe("out", (AsrFinal,))
        actor = AsrActor(SessionContext(S, bus, LoopClock()), engine, params or AsrParams(partial_interval_ms=1e9))
        for event in events:
            await actor.handle(event)
        await asyncio.sleep(0.5)
        got = []
        while (event := out.get_nowait()) is not None:
            got.append(event)
        return got

    finals = run_virtual(main())
    return engine, finals  # type: ignore[return-value]


def segment_events(
    segments: Sequence[tuple[int, int]], vad_lag_frames: int = 3, total: int | None = None
) -> list[Event]:
    """Frames 0..total, with each (first, end) frame span announced as the VAD does: the start
    ``vad_lag_frames`` frames after the speech began, the stop that many after it ended."""
    total = total if total is not None else segments[-1][1] + vad_lag_frames + 1
    events: list[Event] = []
    for seq in range(total):
        events.append(frame(seq))
        for segment_id, (first, end) in enumerate(segments, start=1):
            if seq == first + vad_lag_frames:
                events.append(start(segment_id, first))
            if seq == end + vad_lag_frames:
                events.append(stop(segment_id, end))
    return events


def test_a_final_hears_the_preroll_before_the_vads_onset_so_the_first_syllable_is_kept() -> None:
    preroll_frames = int(AsrParams().preroll_ms // FRAME_MS)
    engine, finals = drive(segment_events([(50, 80)]))
    assert [f.segment_id for f in finals] == [1]
    assert engine.finals == [list(range(50 - preroll_frames, 80 + 3 + 1))]


def test_a_final_never_hears_the_previous_segment_again() -> None:
    # a 100 ms pause: the preroll would reach back into segment 1's words
    engine, _ = drive(segment_events([(50, 80), (85, 120)]))
    assert engine.finals[1][0] == 80


@settings(max_examples=60, deadline=None)
@given(
    first=st.integers(min_value=0, max_value=200),
    length=st.integers(min_value=5, max_value=60),
    gap=st.integers(min_value=1, max_value=60),
    lag=st.integers(min_value=0, max_value=40),
    preroll_ms=st.sampled_from([0.0, 100.0, 300.0, 500.0]),
)
def test_each_final_starts_at_its_preroll_or_the_previous_end_whichever_is_later(
    first: int, length: int, gap: int, lag: int, preroll_ms: float
) -> None:
    second = first + length + gap
    spans = [(first, first + length), (second, second + length)]
    params = AsrParams(partial_interval_ms=1e9, preroll_ms=preroll_ms)
    engine, finals = drive(segment_events(spans, vad_lag_frames=lag, total=second + length + lag + 2), params)
    assert [f.segment_id for f in finals] == [1, 2]
    preroll_frames = int(preroll_ms // FRAME_MS)
    assert engine.finals[0][0] == max(0, first - preroll_frames)
    assert engine.finals[1][0] == max(second - preroll_frames, first + length)
    for heard in engine.finals:
        assert heard == list(range(heard[0], heard[-1] + 1)), "frames are contiguous and in order"


def offset(segment_id: int, at_frame: int) -> VadOffsetCandidate:
    return VadOffsetCandidate(session_id=S, ts_ms=0.0, segment_id=segment_id, speech_end_ms=at_frame * FRAME_MS)


def test_a_final_started_at_an_offset_candidate_is_the_final_when_the_stop_confirms_its_end() -> None:
    frames = [frame(k) for k in range(30)]
    events: list[Event] = [start(1, 2), *frames[:22], offset(1, 20), *frames[22:27], stop(1, 20)]
    engine, finals = drive(events)
    assert len(engine.finals) == 1  # computed once, ahead of the stop
    assert engine.finals[0][-1] == 21  # from the audio heard by the candidate, not by the stop
    assert [f.text for f in finals] == ["22 frames"]


def test_an_early_final_is_dropped_when_the_user_goes_on() -> None:
    frames = [frame(k) for k in range(60)]
    events: list[Event] = [start(1, 2), *frames[:22], offset(1, 20), *frames[22:50], stop(1, 45)]
    engine, finals = drive(events)
    assert len(engine.finals) == 2
    assert [f.text for f in finals] == [f"{len(engine.finals[1])} frames"]
    assert engine.finals[1][-1] == 49
