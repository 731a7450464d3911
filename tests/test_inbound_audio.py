"""The one inbound-audio path both transports share: numbered frames (MQTT) and decoded frames (WebRTC)
get the same audio time, concealment, resync threshold and framing latency."""

from __future__ import annotations

import fractions
from collections.abc import Callable

import av
import numpy as np
import pytest

from duplexer.protocols.inbound_audio import MAX_CONCEAL_MS, RESYNC_LAG_MS, InboundAudio, PipelineFrames
from duplexer.protocols.mqtt_topics import AudioFormat, AudioHeader
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES

DEVICE_FORMAT = AudioFormat(24_000, 20)
OPUS_RATE_HZ = 48_000
OPUS_FRAME_SAMPLES = OPUS_RATE_HZ * FRAME_MS // 1000

Push = Callable[[InboundAudio, int, float], PipelineFrames]
"""Hand the stream its ``index``-th 20 ms frame of silence at ``now_ms``, as one transport does."""


def numbered(inbound: InboundAudio, index: int, now_ms: float) -> PipelineFrames:
    return inbound.push(AudioHeader(index), bytes(DEVICE_FORMAT.frame_bytes), now_ms)


def decoded(inbound: InboundAudio, index: int, now_ms: float) -> PipelineFrames:
    stereo = np.zeros((1, 2 * OPUS_FRAME_SAMPLES), dtype="<i2")
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = OPUS_RATE_HZ
    frame.pts = index * OPUS_FRAME_SAMPLES
    frame.time_base = fractions.Fraction(1, OPUS_RATE_HZ)
    return inbound.push_frame(frame, now_ms)


TRANSPORTS = pytest.mark.parametrize(
    ("make", "push"),
    [
        (lambda: InboundAudio(DEVICE_FORMAT, reorder_window_frames=0), numbered),
        (InboundAudio, decoded),
    ],
    ids=["mqtt-numbered", "webrtc-decoded"],
)


@TRANSPORTS
def test_each_frame_in_gives_its_pipeline_frame_at_once_ending_at_the_clock(
    make: Callable[[], InboundAudio], push: Push
) -> None:
    inbound = make()
    for i in range(20):
        out = push(inbound, i, 5000.0 + i * FRAME_MS)
        assert [seq for seq, _ in out] == [249 + i]  # frame 249 is 4980-5000 ms: it ends at now
        assert len(out[0][1]) == 2 * FRAME_SAMPLES
    assert inbound.counts.pipeline_frames == 20 and inbound.counts.resyncs == 0


@TRANSPORTS
def test_a_short_loss_is_concealed_so_audio_time_keeps_pace(make: Callable[[], InboundAudio], push: Push) -> None:
    inbound = make()
    push(inbound, 0, 1000.0)
    out = push(inbound, 3, 1060.0)  # frames 1 and 2 never came
    assert [seq for seq, _ in out] == [50, 51, 52]
    assert inbound.counts.concealed_ms == pytest.approx(2 * FRAME_MS)


@TRANSPORTS
@pytest.mark.parametrize("pause_ms", [RESYNC_LAG_MS - 100.0, RESYNC_LAG_MS + 100.0, 5000.0])
def test_audio_time_jumps_to_the_clock_only_after_a_lag_over_the_one_threshold(
    make: Callable[[], InboundAudio], push: Push, pause_ms: float
) -> None:
    inbound = make()
    for i in range(5):
        push(inbound, i, 1000.0 + i * FRAME_MS)
    now_ms = 1080.0 + pause_ms  # the microphone paused: the next frame is late by the pause
    out = push(inbound, 5, now_ms)
    if pause_ms > RESYNC_LAG_MS:
        assert inbound.counts.resyncs == 1
        assert [seq for seq, _ in out] == [round(now_ms / FRAME_MS) - 1]  # it ends at now
    else:
        assert inbound.counts.resyncs == 0
        assert [seq for seq, _ in out] == [54]  # a late frame is jitter: it keeps its place


def test_the_resync_threshold_is_the_concealment_limit() -> None:
    assert RESYNC_LAG_MS == MAX_CONCEAL_MS
