"""Echo cancellation's alignment and fallback, per session: the reference follows the echo; bad reference
input turns cancellation off with a warning and a counter, and never silences the user.

The canceller here is a stand-in that subtracts the reference it is given (the room in these tests is a
pure delay and gain), so what is left shows whether the reference was aligned; the DSP itself is the
kernel's (duplexer.kernels.echo_cancel) and is tested with it, and with this module over MQTT.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.protocols.echo_control import EchoControl, EchoParams
from duplexer.protocols.echo_reference import LoopbackReference, PlayedReference, ReferenceRing
from duplexer.protocols.echo_session import SessionEcho
from duplexer.protocols.inbound_audio import InboundAudio
from duplexer.protocols.mqtt_topics import AudioFormat, AudioHeader, EchoConfig, EchoMode
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES
from duplexer.runtime.metrics import Metrics
from tests.conftest import fuzz_settings, voiced
from tests.echo_device import captured_log, log_lines  # noqa: F401 (captured_log: the "log" fixture)

RATE_HZ = 16_000
ECHO_GAIN = 0.7
START_FRAME = 500
"""Frames are numbered in session time; a session's audio does not start at 0."""
EXACT = EchoParams(canceller_delay_ms=0.0, canceller_window_ms=(0.0, 0.0))
"""The stand-in has no delay search of its own: hand it the reference exactly where the echo is."""


class Subtracting:
    """Stand-in canceller: the microphone minus the reference it is given, scaled by the room's gain."""

    user_speech_likely = False
    """What the kernel says while the bot speaks and nothing stands out from its echo: the gate closes."""

    def __init__(self, gain: float = ECHO_GAIN) -> None:
        self.gain = gain
        self.resets = 0

    def process(self, mic_frame: np.ndarray, ref_frame: np.ndarray) -> np.ndarray:
        out = mic_frame.astype(np.float64) - self.gain * ref_frame.astype(np.float64)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def reset(self) -> None:
        self.resets += 1


def bot_and_user(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Real speech for the bot (played) and for the user (near end), as float32 at 16 kHz."""
    speech = voiced(RATE_HZ)
    n = int(seconds * RATE_HZ)
    return speech[:n].copy(), speech[n : 2 * n].copy() * 0.5


def pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def level_db(samples: np.ndarray) -> float:
    return 10 * float(np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-12))


def run_served(
    control: EchoControl,
    bot: np.ndarray,
    user: np.ndarray,
    delay_ms: float,
    drift_ppm: float = 0.0,
    user_from_s: float = 1e9,
    played: np.ndarray | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Send ``played`` (default ``bot``) as the session's reference in 20 ms frames; the microphone hears
    ``bot`` ``delay_ms`` later (its clock off by ``drift_ppm``), plus the user from ``user_from_s``.
    Returns what left and the gates."""
    played_audio = bot if played is None else played
    played_reference = control.reference
    assert isinstance(played_reference, PlayedReference)
    frames = len(bot) // FRAME_SAMPLES
    mic = np.zeros(len(bot))
    t = np.arange(len(bot))
    source = t * (1.0 + drift_ppm * 1e-6) - delay_ms * RATE_HZ / 1000
    valid = source >= 0
    mic[valid] = ECHO_GAIN * np.interp(source[valid], t, bot)
    user_from = int(user_from_s * RATE_HZ)
    if user_from < len(mic):
        mic[user_from:] += user[: len(mic) - user_from]
    out, gates = [], []
    for i in range(frames):
        seq = START_FRAME + i
        now_ms = (seq + 1) * FRAME_MS
        chunk = slice(i * FRAME_SAMPLES, (i + 1) * FRAME_SAMPLES)
        played_reference.write(pcm(played_audio[chunk]), RATE_HZ, seq * FRAME_MS)
        frame, gate = control.process(seq, pcm(mic[chunk]), now_ms)
        out.append(np.frombuffer(frame, dtype="<i2").astype(np.float64) / 32768.0)
        gates.append(gate)
    return np.concatenate(out), gates


def test_the_reference_is_aligned_to_the_echo_and_the_echo_is_cancelled() -> None:
    bot, user = bot_and_user(6.0)
    control = EchoControl(PlayedReference(), Subtracting(), EXACT)
    out, gates = run_served(control, bot, user, delay_ms=187.0)
    assert control.delay is not None and abs(control.delay / 16 - 187.0) <= 1.0
    assert control.locked and control.degraded is None
    tail = out[3 * RATE_HZ :]
    echo_alone = ECHO_GAIN * bot[3 * RATE_HZ - 187 * 16 : len(bot) - 187 * 16]
    assert level_db(tail) < level_db(echo_alone) - 30  # aligned to the sample, the stand-in removes it all
    assert set(gates[-50:]) == {0.0}
    stats = control.stats()
    assert stats["delay_ms"] == pytest.approx(187.0, abs=1.0) and stats["cancelled"] > 0
    assert 0 < stats["process_ms_mean"] < 20.0


def test_a_declared_playout_delay_places_the_reference_until_the_echo_is_found() -> None:
    bot, user = bot_and_user(3.0)
    control = EchoControl(PlayedReference(), Subtracting(), initial_delay_ms=340.0)
    assert control.shift == (340 - 60) * 16  # the echo 60 ms behind the canceller's reference, in its range
    without_hint = EchoControl(PlayedReference(), Subtracting())
    assert without_hint.shift == 0  # the canceller searches its own range (400 ms) meanwhile
    _, gates = run_served(without_hint, bot, user, delay_ms=340.0)
    assert without_hint.locked and without_hint.shift == control.shift  # found within 3 s of speech
    learning, cancelled = without_hint.counts["learning"], without_hint.counts["cancelled"]
    assert learning > 0 and cancelled > 0 and learning + cancelled == without_hint.counts["frames"]
    assert set(gates[:learning]) == {1.0}  # until then the microphone passed as it came, ungated


def test_clock_drift_is_followed_without_giving_up() -> None:
    bot, user = bot_and_user(12.0)
    control = EchoControl(PlayedReference(), Subtracting(), EXACT)
    run_served(control, bot, user, delay_ms=120.0, drift_ppm=800.0)  # 9.6 ms over the run
    assert control.degraded is None and control.counts["degraded_wrong_rate"] == 0
    expected_ms = 120.0 - 12.0 * 0.8  # the device clock runs fast: its echo comes earlier and earlier
    assert control.delay is not None and abs(control.delay / 16 - expected_ms) <= 5.0


@pytest.mark.parametrize(
    ("what", "drift_ppm", "echo_delay_ms"),
    [("plays at another rate", 20_000.0, 100.0), ("plays nothing", 0.0, None)],
)
def test_a_device_whose_echo_does_not_match_the_reference_gets_no_cancellation_and_no_gate(
    log: io.StringIO, what: str, drift_ppm: float, echo_delay_ms: float | None
) -> None:
    bot, user = bot_and_user(14.0)
    metrics = Metrics()
    control = EchoControl(PlayedReference(), Subtracting(), metrics=metrics)
    heard = bot if echo_delay_ms is not None else np.zeros_like(bot)
    mic_out, gates = run_served(
        control, heard, user, delay_ms=echo_delay_ms or 0.0, drift_ppm=drift_ppm, user_from_s=10.0, played=bot
    )
    assert control.degraded in ("wrong_rate", "not_found"), what
    assert metrics.count("echo.degraded", reason=control.degraded) == 1
    (warning,) = log_lines(log, "echo_reference_degraded")
    assert warning["reason"] == control.degraded and warning["level"] == "warning"
    # From then on the microphone passes as it came, so the user's speech is all there, ungated.
    assert set(gates[-100:]) == {1.0}
    user_part = mic_out[11 * RATE_HZ : 13 * RATE_HZ]
    assert level_db(user_part) > level_db(user[RATE_HZ : 3 * RATE_HZ]) - 3


FORMAT = AudioFormat(16_000)


def run_loopback(
    control: EchoControl,
    seconds: float,
    reference_for: Any,
) -> tuple[list[bytes], list[bytes], list[float]]:
    """A device sending microphone frames (its echo and the user) through the inbound path and, as
    ``reference_for(i)`` says, the loopback frames numbered there. Returns the microphone in and out,
    and the gates."""
    loop = control.reference
    assert isinstance(loop, LoopbackReference)
    bot, user = bot_and_user(seconds)
    frames = len(bot) // FRAME_SAMPLES
    mic = InboundAudio(FORMAT)
    mic_in, mic_out, gates = [], [], []
    for i in range(frames):
        now_ms = (START_FRAME + i + 1) * FRAME_MS
        for seq in reference_for(i):  # a device sends each loopback frame before its microphone frame
            if 0 <= seq < frames:
                loop.push(AudioHeader(seq), pcm(bot[seq * FRAME_SAMPLES : (seq + 1) * FRAME_SAMPLES]), now_ms, mic)
        chunk = slice(i * FRAME_SAMPLES, (i + 1) * FRAME_SAMPLES)
        frame = pcm(ECHO_GAIN * bot[chunk] + user[chunk])
        for seq, pipeline_frame in mic.push(AudioHeader(i), frame, now_ms):
            out, gate = control.process(seq, pipeline_frame, now_ms)
            mic_in.append(pipeline_frame)
            mic_out.append(out)
            gates.append(gate)
    return mic_in, mic_out, gates


def loopback_control(metrics: Metrics | None = None) -> EchoControl:
    return EchoControl(LoopbackReference(FORMAT), Subtracting(), metrics=metrics)


def test_a_healthy_loopback_reference_is_used() -> None:
    control = loopback_control()
    mic_in, mic_out, gates = run_loopback(control, 3.0, lambda i: [i])
    assert control.degraded is None and control.counts["cancelled"] == control.counts["frames"]
    assert mic_out[-1] != mic_in[-1] and gates[-1] == 0.0


@pytest.mark.parametrize(
    ("reason", "reference_for"),
    [
        ("stopped", lambda i: [i] if i < 60 else []),
        ("late", lambda i: [i - 20] if i < 60 else [i - 20, i - 19]),
        ("wrong_rate", lambda i: [i] if i < 60 else [i + (i - 60) // 2 + k for k in range(2)]),
    ],
)
def test_a_bad_loopback_reference_turns_cancellation_off_with_a_warning_and_a_counter(
    log: io.StringIO, reason: str, reference_for: Any
) -> None:
    metrics = Metrics()
    control = loopback_control(metrics)
    mic_in, mic_out, gates = run_loopback(control, 5.0, reference_for)
    assert control.counts[f"degraded_{reason}"] >= 1
    assert metrics.count("echo.degraded", reason=reason) >= 1
    warnings = log_lines(log, "echo_reference_degraded")
    assert warnings and warnings[0]["reason"] == reason and warnings[0]["level"] == "warning"
    # Never silenced: every frame of a degraded stretch is the microphone itself, ungated.
    degraded = [i for i in range(len(mic_in)) if mic_out[i] == mic_in[i] and gates[i] == 1.0]
    assert len(degraded) >= 50
    assert all(gates[i] == 1.0 for i in range(len(mic_in)) if mic_out[i] == mic_in[i])


def test_a_loopback_reference_that_comes_back_is_used_again(log: io.StringIO) -> None:
    control = loopback_control()
    _, _, gates = run_loopback(control, 6.0, lambda i: [i] if not 60 <= i < 120 else [])
    assert control.counts["degraded_stopped"] == 1 and control.degraded is None
    assert log_lines(log, "echo_reference_recovered") and control.canceller.resets == 1  # type: ignore[attr-defined]
    assert gates[-1] == 0.0


# ------------------------------------------------------------------ properties


@fuzz_settings()
@given(
    writes=st.lists(
        st.tuples(st.integers(0, 40_000), st.integers(1, 3000)),
        min_size=1,
        max_size=12,
    ),
    read_at=st.integers(-5000, 50_000),
    read_n=st.integers(0, 5000),
)
def test_the_reference_ring_reads_what_was_written_last_within_its_memory(
    writes: list[tuple[int, int]], read_at: int, read_n: int
) -> None:
    ring = ReferenceRing(capacity_ms=1000)
    model: dict[int, float] = {}
    newest = None
    for k, (start, n) in enumerate(writes):
        if newest is not None and start > newest:
            for i in range(newest, start):
                model.pop(i, None)
        values = np.full(n, (k + 1) / 100.0, dtype=np.float32)
        ring.write_at(start, values)
        model.update({start + i: float(values[i]) for i in range(n)})
        newest = start + n if newest is None else max(newest, start + n)
    got = ring.read(read_at, read_n)
    assert newest is not None
    for j in range(read_n):
        index = read_at + j
        inside = newest - ring.capacity <= index < newest
        expected = model.get(index, 0.0) if inside else 0.0
        assert got[j] == pytest.approx(expected)


def test_a_playout_report_moves_the_reply_to_where_it_played() -> None:
    played = PlayedReference()
    tone = np.full(FRAME_SAMPLES, 0.25, dtype=np.float32)
    for k in range(5):
        played.write(pcm(tone), RATE_HZ, 1000.0 + FRAME_MS * k, seq=7 + k)
    assert played.ring.read(16 * 1000, 16).max() > 0.2
    assert played.played_at(7, 1130.0)  # the device began to play it 130 ms after it was sent
    assert not played.played_at(99, 1000.0)
    assert np.allclose(played.ring.read(16 * 1000, 16 * 125), 0.0)  # nothing played before then
    assert played.ring.read(16 * 1140, 16 * 80).min() > 0.2
    played.write(pcm(tone), RATE_HZ, 1100.0, seq=12)  # the reply goes on from where it played
    assert played.frames[12][0] == played.frames[11][0] + len(played.frames[11][1])


def test_a_device_s_next_session_starts_from_the_echo_delay_its_last_one_found() -> None:
    echo = SessionEcho(EchoConfig(EchoMode.SERVER), make_canceller=Subtracting)
    echo.start(FORMAT, Metrics())
    assert echo.control is not None and not echo.control.declared  # nothing known: it must find the echo
    bot, user = bot_and_user(3.0)
    run_served(echo.control, bot, user, delay_ms=230.0)
    assert echo.control.locked
    echo.stop()
    echo.start(FORMAT, Metrics())
    assert echo.control is not None and echo.control.declared
    assert echo.learned_delay_ms is not None and abs(echo.learned_delay_ms - 230.0) <= 1.0
    assert echo.control.delay == round(echo.learned_delay_ms * 16)
