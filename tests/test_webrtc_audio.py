"""Call audio: inbound resampling and framing, and the outbound track's pacing, phase and flush.

Track timing runs on the virtual-time loop, so every send time is exact.
"""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest

from duplexer.kernels.audio import resample
from duplexer.protocols.inbound_audio import InboundAudio
from duplexer.protocols.webrtc_audio import (
    OPUS_FRAME_SAMPLES,
    OPUS_RATE_HZ,
    BotAudioTrack,
)
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ

TONE_HZ = 440.0
AMPLITUDE = 10_000


def tone(n: int, rate_hz: int, start: int = 0) -> np.ndarray:
    return AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * (np.arange(start, start + n) / rate_hz))


def chromium_frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    """A decoded frame as aiortc hands it over from Chromium: 48 kHz stereo s16, 960 samples."""
    stereo = np.repeat(samples.astype("<i2"), 2).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = OPUS_RATE_HZ
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, OPUS_RATE_HZ)
    return frame


def test_chromium_stereo_48k_becomes_16k_pipeline_frames_with_no_seam_at_frame_edges() -> None:
    inbound = InboundAudio()
    source = tone(OPUS_FRAME_SAMPLES * 50, OPUS_RATE_HZ)
    frames = []
    for i in range(50):
        chunk = source[i * OPUS_FRAME_SAMPLES : (i + 1) * OPUS_FRAME_SAMPLES]
        frames += inbound.push_frame(chromium_frame(chunk, i * OPUS_FRAME_SAMPLES), now_ms=1000.0 + (i + 1) * FRAME_MS)
    assert len(frames) == 50  # one pipeline frame per network frame: no carry-over latency
    assert all(len(pcm) == 2 * FRAME_SAMPLES for _, pcm in frames)
    out = np.frombuffer(b"".join(pcm for _, pcm in frames), dtype="<i2").astype(np.float64)
    whole = resample(source.astype(np.float32), OPUS_RATE_HZ, INPUT_SAMPLE_RATE_HZ)
    inner = slice(FRAME_SAMPLES, len(out) - FRAME_SAMPLES)
    lag = min(range(0, 24), key=lambda d: float(np.abs(out[inner] - np.roll(whole, d)[inner]).max()))
    assert lag <= INPUT_SAMPLE_RATE_HZ // 1000  # the filter delays by 1 ms at most
    error = np.abs(out[inner] - np.roll(whole, lag)[inner])
    assert error.max() < 0.01 * AMPLITUDE
    # every frame edge is as smooth as the inside of a frame
    steps = np.abs(np.diff(out[FRAME_SAMPLES:]))
    assert steps.max() < 1.05 * np.abs(np.diff(tone(4000, INPUT_SAMPLE_RATE_HZ))).max()


def test_inbound_audio_time_keeps_step_with_the_clock_fills_lost_packets_and_resyncs() -> None:
    inbound = InboundAudio()
    silence = np.zeros(OPUS_FRAME_SAMPLES)
    first = inbound.push_frame(chromium_frame(silence, 0), now_ms=5000.0)
    assert [seq for seq, _ in first] == [249]  # its 20 ms end at the clock's now
    second = inbound.push_frame(chromium_frame(silence, OPUS_FRAME_SAMPLES), now_ms=5020.0)
    assert [seq for seq, _ in second] == [250]
    # two packets lost: 40 ms of silence stand in for them, audio time stays in step
    third = inbound.push_frame(chromium_frame(silence, 4 * OPUS_FRAME_SAMPLES), now_ms=5080.0)
    assert [seq for seq, _ in third] == [251, 252, 253]
    assert inbound.counts.concealed_ms == pytest.approx(40.0)
    # the microphone paused for 3 s (no packets, pts jumps on): audio time jumps to the clock
    later = inbound.push_frame(chromium_frame(silence, 200 * OPUS_FRAME_SAMPLES), now_ms=8100.0)
    assert [seq for seq, _ in later] == [404]
    assert inbound.counts.resyncs == 1


async def _collect(track: BotAudioTrack, n: int) -> list[tuple[float, av.AudioFrame]]:
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        frame = await track.recv()
        out.append((loop.time(), frame))
    return out


def _level(frame: av.AudioFrame) -> float:
    return float(np.abs(frame.to_ndarray()).max())


def test_the_track_paces_frames_by_pts_and_sends_silence_between_replies() -> None:
    async def scenario() -> list[tuple[float, av.AudioFrame]]:
        track = BotAudioTrack(LoopClock())
        return await _collect(track, 50)

    sent = run_virtual(scenario())
    assert isinstance(sent, list)
    times = [t for t, _ in sent]
    assert [f.pts for _, f in sent] == [i * OPUS_FRAME_SAMPLES for i in range(50)]
    assert np.allclose(np.diff(times), FRAME_MS / 1000.0)  # one frame per 20 ms, never ahead
    assert all(f.samples == OPUS_FRAME_SAMPLES and f.sample_rate == OPUS_RATE_HZ for _, f in sent)
    assert max(_level(f) for _, f in sent) == 0


def _writer(track: BotAudioTrack, first_s: float, n: int, rate_hz: int = 22_050) -> asyncio.Task[list[float]]:
    """The playout actor's part: one 20 ms frame of a tone every 20 ms, from ``first_s``."""

    async def write() -> list[float]:
        loop = asyncio.get_running_loop()
        frame_samples = rate_hz * FRAME_MS // 1000
        times = []
        for k in range(n):
            await asyncio.sleep(max(0.0, first_s + k * FRAME_MS / 1000.0 - loop.time()))
            pcm = tone(frame_samples, rate_hz, k * frame_samples).astype("<i2").tobytes()
            track.write(pcm, rate_hz, "t1r1", 0.0)
            times.append(loop.time())
        return times

    return asyncio.create_task(write())


@pytest.mark.parametrize("phase_ms", [3.0, 13.0], ids=["writer-after-deadline", "writer-before-deadline"])
def test_bot_audio_leaves_the_track_as_soon_as_it_is_written_whatever_the_phase(phase_ms: float) -> None:
    async def scenario() -> tuple[list[float], list[tuple[float, av.AudioFrame]], BotAudioTrack]:
        track = BotAudioTrack(LoopClock())
        writes = _writer(track, 0.1 + phase_ms / 1000.0, 40)
        sent = await _collect(track, 60)
        return await writes, sent, track

    result = run_virtual(scenario())
    assert isinstance(result, tuple)
    writes, sent, track = result
    audio_times = [t for t, f in sent if _level(f) > 0]
    assert len(audio_times) == 40
    assert np.allclose(audio_times, writes)  # no frame waits for the track's next tick
    assert track.counts.max_queued_frames <= 1
    pts = [f.pts for _, f in sent]
    assert pts == [i * OPUS_FRAME_SAMPLES for i in range(60)]  # the stream stays continuous


def test_writes_smaller_than_a_frame_never_make_the_track_run_ahead_of_real_time() -> None:
    async def scenario() -> list[tuple[float, av.AudioFrame]]:
        track = BotAudioTrack(LoopClock())

        async def half_frames() -> None:  # 10 ms pieces, starting mid-frame
            for k in range(100):
                await asyncio.sleep(max(0.0, 0.105 + k * 0.010 - asyncio.get_running_loop().time()))
                track.write(tone(160, 16_000, k * 160).astype("<i2").tobytes(), 16_000, "t1r1", 0.0)

        writes = asyncio.create_task(half_frames())
        sent = await _collect(track, 60)
        await writes
        return sent

    sent = run_virtual(scenario())
    assert isinstance(sent, list)
    times = np.array([t for t, _ in sent])
    # never more frames out than time has passed (one frame of schedule shift allowed at the reply's start)
    assert all(i * FRAME_MS / 1000.0 - times[i] <= FRAME_MS / 1000.0 + 1e-9 for i in range(len(times)))
    assert sum(1 for _, f in sent if _level(f) > 0) == 50


def test_upsampled_bot_audio_is_seamless_across_writes() -> None:
    async def scenario() -> list[tuple[float, av.AudioFrame]]:
        track = BotAudioTrack(LoopClock())
        writes = _writer(track, 0.1, 40)
        sent = await _collect(track, 50)
        await writes
        return sent

    sent = run_virtual(scenario())
    assert isinstance(sent, list)
    audio = np.concatenate([f.to_ndarray().reshape(-1) for _, f in sent if _level(f) > 0]).astype(np.float64)
    inner = audio[100:-100]
    ideal_step = np.abs(np.diff(tone(48_000, OPUS_RATE_HZ))).max()
    assert np.abs(np.diff(inner)).max() < 1.05 * ideal_step  # no click at any 20 ms edge
    assert np.abs(inner).max() > 0.95 * AMPLITUDE


def test_flush_drops_unsent_audio_at_once_and_the_next_frame_is_silence() -> None:
    async def scenario() -> tuple[list[tuple[float, av.AudioFrame]], BotAudioTrack]:
        track = BotAudioTrack(LoopClock())
        first = await _collect(track, 1)
        pcm = tone(22_050 // 10, 22_050).astype("<i2").tobytes()  # 100 ms at once: 5 frames queued
        track.write(pcm, 22_050, "t1r1", 0.0)
        second = await _collect(track, 1)
        track.flush()
        rest = await _collect(track, 5)
        return first + second + rest, track

    result = run_virtual(scenario())
    assert isinstance(result, tuple)
    sent, track = result
    levels = [_level(f) for _, f in sent]
    assert levels[1] > 0
    assert levels[2:] == [0.0] * 5
    assert track.counts.flushed_frames == 4
    reply = track.replies["t1r1"]
    assert reply.frames == 1
    assert reply.last_sent_end_ms == pytest.approx(reply.first_sent_ms + FRAME_MS)


def test_the_outbound_queue_is_bounded_so_latency_cannot_pile_up() -> None:
    async def scenario() -> BotAudioTrack:
        track = BotAudioTrack(LoopClock(), max_queue_ms=100.0)
        pcm = tone(22_050, 22_050).astype("<i2").tobytes()  # a whole second written at once
        track.write(pcm, 22_050, "t1r1", 0.0)
        return track

    track = run_virtual(scenario())
    assert isinstance(track, BotAudioTrack)
    assert len(track.queue) == 5
    assert track.counts.overflow_frames == 45
