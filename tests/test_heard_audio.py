"""Received audio scored as heard (a sample's time is its frame's arrival plus its offset), and the scripted
voice's leading silence that makes it differ from the first frame."""

from __future__ import annotations

import random

import numpy as np
import pytest

from duplexer.actors.scripted import ScriptedTts
from duplexer.protocols.engine_factory import PIPER_LEAD_SILENCE_MS, HummingTts
from duplexer.protocols.heard_audio import HeardAudio
from duplexer.runtime.clock import LoopClock, run_virtual

RATE_HZ = 48_000
FRAME = RATE_HZ // 50  # 20 ms


def received(pcm: np.ndarray, first_arrival_s: float = 10.0, late_s: float = 0.0) -> HeardAudio:
    """``pcm`` as 20 ms frames arriving on time, each ``late_s`` after its schedule (jitter buffers)."""
    heard = HeardAudio(RATE_HZ)
    for k in range(0, len(pcm), FRAME):
        heard.add(first_arrival_s + k / RATE_HZ + late_s, pcm[k : k + FRAME])
    return heard


def hum(ms: float) -> np.ndarray:
    n = int(RATE_HZ * ms / 1000)
    return (5000 * np.sin(2 * np.pi * 220.0 * np.arange(1, n + 1) / RATE_HZ)).astype(np.int16)


def silence(ms: float) -> np.ndarray:
    return np.zeros(int(RATE_HZ * ms / 1000), dtype=np.int16)


def test_the_onset_is_the_first_audible_sample_not_the_first_frame_of_a_reply() -> None:
    heard = received(np.concatenate([silence(250.0), hum(500.0)]), late_s=0.05)
    onset = heard.onset_s()
    assert onset is not None
    assert onset == pytest.approx(10.0 + 0.25 + 0.05, abs=0.0005)  # mid-frame, to the sample
    assert heard.onset_s(after_s=11.0) is None


def test_the_end_is_the_last_audible_sample_once_the_quiet_after_it_has_arrived() -> None:
    pcm = np.concatenate([hum(1000.0), hum(137.0), silence(60.0)])
    heard = received(pcm)
    assert heard.end_s(after_s=10.5) is None  # 63 ms of quiet so far: not yet a stop
    for k in range(len(pcm), len(pcm) + 10 * FRAME, FRAME):
        heard.add(10.0 + k / RATE_HZ, silence(20.0))
    end = heard.end_s(after_s=10.5)
    assert end == pytest.approx(10.0 + 1.137, abs=0.0005)
    # asked from a time when the audio was already quiet: the stop came before it
    assert heard.end_s(after_s=10.0 + 1.25) == pytest.approx(end)


def test_a_short_gap_is_not_a_stop_and_nothing_heard_gives_no_time() -> None:
    pcm = np.concatenate([hum(400.0), silence(60.0), hum(400.0), silence(200.0)])
    end = received(pcm).end_s(after_s=10.1)
    assert end == pytest.approx(10.0 + 0.86, abs=0.0005)
    quiet = received(silence(500.0))
    assert quiet.onset_s() is None and quiet.end_s(after_s=10.0) is None


def test_the_scripted_voice_opens_each_reply_but_not_its_later_clauses_with_digital_silence() -> None:
    async def render() -> list[bytes]:
        tts = HummingTts(ScriptedTts(LoopClock(), random.Random(0)), lead_silence_ms=PIPER_LEAD_SILENCE_MS)
        clauses = [("Hello there,", "t1r1"), ("how are you?", "t1r1"), ("Fine.", "t2r1")]
        return [b"".join([c async for c in tts.synthesize(text, reply)]) for text, reply in clauses]

    first, second, other = run_virtual(render())  # type: ignore[misc]
    onsets = [HeardAudio(16_000) for _ in range(3)]
    for heard, pcm in zip(onsets, (first, second, other), strict=True):
        heard.add(0.0, np.frombuffer(pcm, dtype="<i2"))
    starts = [heard.onset_s() for heard in onsets]
    assert starts[0] == pytest.approx(PIPER_LEAD_SILENCE_MS / 1000, abs=0.001)
    assert starts[1] == pytest.approx(0.0, abs=0.001)
    assert starts[2] == pytest.approx(PIPER_LEAD_SILENCE_MS / 1000, abs=0.001)
