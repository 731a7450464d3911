"""Specification of the echo canceller (duplexer.kernels.echo_cancel) and its kernels."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.kernels import echo_filter
from duplexer.kernels.echo_cancel import AEC_FRAME_SAMPLES, EchoCanceller
from tests.conftest import PHRASES

N = AEC_FRAME_SAMPLES
RATE = 16_000
FAST = settings(max_examples=40, deadline=None)


def run(aec: EchoCanceller, mic: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Float signals in; (output aligned to the mic, linear-filter output, gate per frame)."""
    total = len(mic) // N * N
    out, lin, gate = np.zeros(total), np.zeros(total), []
    m16 = np.clip(np.round(mic * 32768), -32768, 32767).astype(np.int16)
    r16 = np.clip(np.round(ref * 32768), -32768, 32767).astype(np.int16)
    for i in range(0, total, N):
        out[i : i + N] = aec.process(m16[i : i + N], r16[i : i + N]) / 32768.0
        lin[i : i + N] = aec.linear_frame
        gate.append(aec.user_speech_likely)
    lat = aec.latency_samples
    return np.concatenate([out[lat:], np.zeros(lat)]), lin, gate


def db(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x**2) / max(np.sum(y**2), 1e-20)))


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Coloured noise switched on and off like syllables: a stand-in for speech in fast tests."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    x = np.convolve(rng.standard_normal(n), [1.0, 0.7, 0.3], "same")
    envelope = np.repeat(rng.random(n // 1600 + 1) > 0.3, 1600)[:n]
    return 0.05 * x * envelope


@functools.cache
def vap(voice: str, count: int) -> list[np.ndarray]:
    from duplexer.protocols.wav import read_wav

    clips = []
    for wav in sorted(PHRASES.glob(f"*{voice}.wav"))[:count]:
        clips.append(np.frombuffer(read_wav(wav, RATE), dtype=np.int16) / 32768.0)
    return clips


# ------------------------------------------------------------------ kernels: numba == NumPy


complex_arrays = st.tuples(st.integers(1, 6), st.integers(1, 40))


@FAST
@given(shape=complex_arrays, seed=st.integers(0, 2**31))
def test_filter_kernels_match_the_reference(shape: tuple[int, int], seed: int) -> None:
    m, k = shape
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, k)) + 1j * rng.standard_normal((m, k))
    x = rng.standard_normal((m, k)) + 1j * rng.standard_normal((m, k))
    e = rng.standard_normal(k) + 1j * rng.standard_normal(k)
    step = rng.random(k)
    np.testing.assert_allclose(
        echo_filter.echo_spectrum_numba(w, x), echo_filter.echo_spectrum_reference(w, x), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        echo_filter.filter_gradient_numba(x, e, step), echo_filter.filter_gradient_reference(x, e, step), rtol=1e-12
    )


@FAST
@given(
    k=st.integers(1, 60),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([0.0, 1e-9, 1.0, 1e6]),
    leak=st.floats(0, 1),
    ratio=st.floats(0, 0.5),
)
def test_step_and_gain_kernels_match_the_reference(k: int, seed: int, scale: float, leak: float, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    e, y, x, r, noise = (scale * rng.random(k) for _ in range(5))
    leaks = np.full(k, leak)
    got = echo_filter.step_sizes_numba(e, y, x, leaks, ratio, 5, 0.5)
    want = echo_filter.step_sizes_reference(e, y, x, leaks, ratio, 5, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.all(np.isfinite(got)) and np.all(got >= 0)
    gain = echo_filter.suppression_gain_numba(e, r, noise, 2.0, 0.01)
    np.testing.assert_allclose(gain, echo_filter.suppression_gain_reference(e, r, noise, 2.0, 0.01), rtol=1e-12)
    assert np.all((gain >= 0.01) & (gain <= 1.0))


def test_the_numpy_backend_gives_the_same_output() -> None:
    ref = speech_like(2.0, 1)
    mic = np.concatenate([np.zeros(800), 0.5 * ref])[: len(ref)]
    out_numba, _, _ = run(EchoCanceller(backend="numba"), mic, ref)
    out_numpy, _, _ = run(EchoCanceller(backend="numpy"), mic, ref)
    np.testing.assert_allclose(out_numba, out_numpy, atol=2 / 32768)


# ------------------------------------------------------------------ the canceller


@settings(max_examples=5, deadline=None)
@given(delay_ms=st.integers(20, 300), gain=st.floats(0.1, 1.0), seed=st.integers(0, 2**16))
def test_converges_on_a_synthetic_echo_path_and_finds_its_delay(delay_ms: int, gain: float, seed: int) -> None:
    """Any device delay within 20-300 ms and any echo gain: the delay is found to 2 ms, the linear filter
    takes 20 dB off the echo and suppression 10 dB more, once converged (after 4 s)."""
    rng = np.random.default_rng(seed)
    ref = speech_like(7.0, seed)
    path = np.zeros(1200)
    path[0] = gain
    path[1:] = 0.1 * gain * rng.standard_normal(1199) * np.exp(-np.arange(1199) / 250)
    delay = int(delay_ms * RATE / 1000)
    echo = np.convolve(np.concatenate([np.zeros(delay), ref]), path)[: len(ref)]
    mic = echo + 1e-4 * rng.standard_normal(len(ref))
    aec = EchoCanceller()
    out, lin, _ = run(aec, mic, ref)
    late = slice(4 * RATE, len(out))
    assert aec.stats.delay_ms is not None and abs(aec.stats.delay_ms - delay_ms) <= 2.0
    assert db(mic[late], lin[late]) > 20.0
    assert db(mic[late], out[late]) > 30.0
    assert aec.stats.erle_linear_db > 15.0 and aec.stats.erle_total_db > aec.stats.erle_linear_db


def test_silence_in_silence_out_and_no_reference_passes_the_mic_through() -> None:
    aec = EchoCanceller()
    zeros = np.zeros(N, dtype=np.int16)
    assert not np.any(aec.process(zeros, zeros))
    voice = speech_like(1.0, 5)
    out, _, gate = run(aec, voice, np.zeros_like(voice))
    # With the bot silent nothing is suppressed: the output is the microphone, 10 ms later.
    assert abs(db(voice[: len(out) - 400], out[: len(out) - 400])) < 0.1
    assert all(gate)


@FAST
@given(
    seed=st.integers(0, 2**31),
    mic_scale=st.sampled_from([0.0, 1e-4, 0.1, 1.5]),
    ref_scale=st.sampled_from([0.0, 1e-4, 0.1, 1.5]),
    frames=st.integers(1, 40),
)
def test_never_amplifies_and_stays_finite(seed: int, mic_scale: float, ref_scale: float, frames: int) -> None:
    """Any microphone and reference (clipped, silent, unrelated): the output is never louder than the
    microphone over the run, and every sample is a valid int16."""
    rng = np.random.default_rng(seed)
    mic = np.clip(mic_scale * rng.standard_normal(frames * N), -1, 1)
    ref = np.clip(ref_scale * rng.standard_normal(frames * N), -1, 1)
    aec = EchoCanceller()
    m16 = np.round(mic * 32767).astype(np.int16)
    r16 = np.round(ref * 32767).astype(np.int16)
    outs = [aec.process(m16[i : i + N], r16[i : i + N]) for i in range(0, frames * N, N)]
    out = np.concatenate(outs).astype(np.float64)
    assert all(o.dtype == np.int16 and len(o) == N for o in outs)
    assert np.sum(out**2) <= np.sum(m16.astype(np.float64) ** 2) * (1 + 1e-6) + N * frames
    assert all(np.isfinite(v) for v in (aec.stats.erle_linear_db, aec.stats.erle_total_db, aec.stats.residual_db))


@pytest.mark.parametrize(("mic_len", "ref_len"), [(N - 1, N), (N, N + 1), (0, 0)])
def test_wrong_frame_sizes_are_refused(mic_len: int, ref_len: int) -> None:
    with pytest.raises(ValueError, match="frames are 320 samples"):
        EchoCanceller().process(np.zeros(mic_len, np.int16), np.zeros(ref_len, np.int16))


def test_reset_forgets_the_echo_path() -> None:
    ref = speech_like(4.0, 7)
    mic = np.concatenate([np.zeros(1600), 0.4 * ref])[: len(ref)]
    aec = EchoCanceller()
    run(aec, mic, ref)
    assert aec.stats.delay_ms is not None
    aec.reset()
    assert aec.stats.delay_ms is None and aec.stats.frames == 0 and not np.any(aec.w_fg)


@pytest.mark.slow
def test_double_talk_keeps_the_user_and_the_cancellation() -> None:
    """Real speech through a simulated room: after convergence the user talks over the bot. Their speech
    comes through (level within 2 dB, 10 dB above what is left of the echo), the gate lets it pass, and
    the echo of the next bot-only stretch is cancelled again: double-talk neither silences the user nor
    wrecks the filter."""
    from duplexer.sims.echo_path import BOT_LEVEL_DBFS, ROOMS, USER_LEVEL_DBFS, EchoPath, at_level, render_mic

    bot = np.concatenate([np.concatenate([at_level(c, BOT_LEVEL_DBFS), np.zeros(3200)]) for c in vap("Wavenet-A", 6)])
    user_voice = at_level(vap("Wavenet-C", 1)[0], USER_LEVEL_DBFS)
    user = np.zeros_like(bot)
    start = int(len(bot) * 0.55)
    user[start : start + len(user_voice)] = user_voice
    path = EchoPath(room=ROOMS["living"], delay_ms=150.0, echo_db=0.0)
    mic, echo = render_mic(path, bot, user, seed=1)
    aec = EchoCanceller()
    out, _, gate = run(aec, mic, bot)
    words = slice(start, start + len(user_voice))
    kept = out[words]
    assert abs(db(kept, user[words])) < 2.0
    residual = kept - user[words] - (mic[words] - echo[words] - user[words])  # minus the noise
    assert db(user[words], residual) > 10.0

    def loud(signal: np.ndarray, frames: range) -> list[int]:
        return [
            i for i in frames if np.mean(signal[i * N : (i + 1) * N] ** 2) > 1e-4
        ]  # within 14 dB of the active level

    user_frames = loud(user, range(start // N, (start + len(user_voice)) // N))
    assert np.mean([gate[i] for i in user_frames]) > 0.8
    after = slice(start + len(user_voice) + RATE // 2, len(out))
    assert db(mic[after], out[after]) > 20.0
    bot_only = loud(bot, range(2 * RATE // N, start // N))
    assert np.mean([gate[i] for i in bot_only]) < 0.15
