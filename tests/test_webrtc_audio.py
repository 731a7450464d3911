"""Call audio: inbound resampling and framing, the outbound track's pacing, phase and flush, and the turn meter.

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
from duplexer.protocols.webrtc_call import TurnMeter
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    CommitReply,
    Event,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    StartReply,
    VadSpeechStart,
    VadSpeechStop,
)

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


# ------------------------------------------------------------------ the turn meter: what the caller hears

LEAD_SILENCE_MS = 250.0


def _send_reply(
    reply_id: str, lead_silence_ms: float, audible_ms: float, flush_after_ms: float | None = None
) -> BotAudioTrack:
    """Play one reply through a track as the playout actor does (20 ms writes from t = 100 ms), sending it all.

    Its first chunk opens with ``lead_silence_ms`` of digital silence, as Piper's do.
    """
    rate_hz = 22_050
    frame_samples = rate_hz * FRAME_MS // 1000
    pcm = np.concatenate(
        [np.zeros(int(rate_hz * lead_silence_ms / 1000)), tone(int(rate_hz * audible_ms / 1000), rate_hz)]
    ).astype("<i2")

    async def scenario() -> BotAudioTrack:
        track = BotAudioTrack(LoopClock())
        loop = asyncio.get_running_loop()

        async def write() -> None:
            for k in range(0, len(pcm), frame_samples):
                await asyncio.sleep(max(0.0, 0.1 + k / rate_hz - loop.time()))
                if flush_after_ms is not None and 1000.0 * k / rate_hz >= flush_after_ms:
                    track.flush()
                    return
                track.write(pcm[k : k + frame_samples].tobytes(), rate_hz, reply_id, 0.0)

        writes = asyncio.create_task(write())
        await _collect(track, round((0.2 + len(pcm) / rate_hz) * 1000 / FRAME_MS))
        await writes
        return track

    track = run_virtual(scenario())
    assert isinstance(track, BotAudioTrack)
    return track


def _meter_reply(
    track: BotAudioTrack, reply_id: str, speech_end_ms: float, barge_in_onset_ms: float | None = None
) -> dict[str, object]:
    """Feed the meter a reply's events: committed after the user's turn, played, then done or stopped."""
    meter = TurnMeter(track)
    common = {"session_id": "s", "turn_id": 1}
    events: list[Event] = [
        VadSpeechStop(ts_ms=speech_end_ms, segment_id=1, probability=0.9, speech_end_ms=speech_end_ms, **common),
        StartReply(ts_ms=speech_end_ms, reply_id=reply_id, user_text="hi", speculative=False, **common),
        CommitReply(ts_ms=speech_end_ms, reply_id=reply_id, user_text="hi", **common),
        PlayoutStarted(ts_ms=100.0, reply_id=reply_id, **common),
    ]
    if barge_in_onset_ms is None:
        events.append(PlayoutDone(ts_ms=5000.0, reply_id=reply_id, played_ms=0.0, **common))
    else:
        onset = barge_in_onset_ms
        events.append(VadSpeechStart(ts_ms=onset, segment_id=2, probability=0.9, speech_start_ms=onset, **common))
        events.append(PlayoutStopped(ts_ms=5000.0, reply_id=reply_id, played_ms=0.0, **common))
    out = [meter.see(event) for event in events]
    assert out[:-1] == [None] * (len(events) - 1) and out[-1] is not None
    return out[-1]


def test_response_latency_starts_at_the_first_audible_sample_sent_not_the_first_frame() -> None:
    track = _send_reply("t1r1", LEAD_SILENCE_MS, 600.0)
    reply = track.replies["t1r1"]
    assert reply.first_audible_ms is not None
    assert abs(reply.first_audible_ms - reply.first_sent_ms - LEAD_SILENCE_MS) <= 2.0  # sample-exact, bar the filter
    metrics = _meter_reply(track, "t1r1", speech_end_ms=0.0)
    heard, engine = metrics["response_latency_ms"], metrics["engine_first_chunk_ms"]
    assert isinstance(heard, float) and isinstance(engine, float)
    assert abs(heard - engine - LEAD_SILENCE_MS) <= FRAME_MS
    assert abs(engine - 100.0) <= FRAME_MS  # the first frame left as it was written
    assert metrics["barge_in_stop_ms"] is None and metrics["engine_barge_in_stop_ms"] is None


def test_barge_in_stop_ends_at_the_last_audible_sample_sent_and_a_silent_reply_has_no_figures() -> None:
    # audible from 100 + 250 ms; the user comes in at 500 ms; the reply is flushed 600 ms into it
    track = _send_reply("t1r1", LEAD_SILENCE_MS, 2000.0, flush_after_ms=600.0)
    reply = track.replies["t1r1"]
    assert reply.last_audible_end_ms is not None
    metrics = _meter_reply(track, "t1r1", speech_end_ms=0.0, barge_in_onset_ms=500.0)
    assert metrics["barge_in_stop_ms"] == pytest.approx(reply.last_audible_end_ms - 500.0, abs=0.1)
    assert metrics["engine_barge_in_stop_ms"] == pytest.approx(reply.last_sent_end_ms - 500.0, abs=0.1)
    assert abs(metrics["barge_in_stop_ms"] - 200.0) <= FRAME_MS  # type: ignore[operator]

    # stopped while still in its leading silence: nothing was heard, so no figure rather than a flattering one
    silent = _send_reply("t2r1", LEAD_SILENCE_MS, 2000.0, flush_after_ms=200.0)
    assert silent.replies["t2r1"].first_audible_ms is None
    metrics = _meter_reply(silent, "t2r1", speech_end_ms=0.0, barge_in_onset_ms=150.0)
    assert metrics["response_latency_ms"] is None and metrics["barge_in_stop_ms"] is None
    assert metrics["engine_first_chunk_ms"] is not None and metrics["engine_barge_in_stop_ms"] is not None
