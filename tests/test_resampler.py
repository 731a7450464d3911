"""The project's one resampler (kernels.audio): length and rate of its output, identity, a tone's frequency."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.kernels.audio import StreamingResampler, resample

RATES_HZ = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
rates = st.sampled_from(RATES_HZ)


@settings(max_examples=40, deadline=None)
@given(from_hz=rates, to_hz=rates, n=st.integers(min_value=0, max_value=5_000))
def test_a_whole_buffer_keeps_its_duration_at_the_new_rate(from_hz: int, to_hz: int, n: int) -> None:
    samples = np.random.default_rng(n).uniform(-1.0, 1.0, n).astype(np.float32)
    out = resample(samples, from_hz, to_hz)
    assert out.dtype == np.float32
    assert len(out) == round(n * to_hz / from_hz)


@settings(max_examples=40, deadline=None)
@given(
    from_hz=rates,
    to_hz=rates,
    chunks=st.lists(st.integers(min_value=0, max_value=1_500), min_size=1, max_size=12),
)
def test_with_lead_in_every_chunk_gives_its_share_at_once_and_chunking_changes_nothing(
    from_hz: int, to_hz: int, chunks: list[int]
) -> None:
    rng = np.random.default_rng(sum(chunks))
    pcm = (rng.uniform(-20_000, 20_000, sum(chunks))).astype("<i2").tobytes()
    chunked = StreamingResampler(from_hz, to_hz, lead_in=True)
    pieces, fed = [], 0
    for n in chunks:
        pieces.append(chunked.process(pcm[2 * fed : 2 * (fed + n)]))
        fed += n
        produced = sum(len(p) for p in pieces) // 2
        assert produced == -(-fed * to_hz // from_hz)  # ceil: nothing is held back
    assert b"".join(pieces) == StreamingResampler(from_hz, to_hz, lead_in=True).process(pcm)


@given(rate_hz=rates, n=st.integers(min_value=0, max_value=2_000))
def test_equal_rates_are_the_identity(rate_hz: int, n: int) -> None:
    samples = np.random.default_rng(n).uniform(-1.0, 1.0, n).astype(np.float32)
    assert np.array_equal(resample(samples, rate_hz, rate_hz), samples)
    pcm = (samples * 32767).astype("<i2").tobytes()
    assert StreamingResampler(rate_hz, rate_hz, lead_in=True).process(pcm) == pcm


def _peak_hz(samples: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate_hz)[int(np.argmax(spectrum))])


@settings(max_examples=30, deadline=None)
@given(from_hz=rates, to_hz=rates, tone_share=st.floats(min_value=0.02, max_value=0.8))
def test_a_tone_keeps_its_frequency_and_level(from_hz: int, to_hz: int, tone_share: float) -> None:
    tone_hz = tone_share * min(from_hz, to_hz) / 2  # inside the pass band of both rates
    t = np.arange(from_hz // 2) / from_hz  # half a second
    out = resample(np.sin(2 * np.pi * tone_hz * t).astype(np.float32), from_hz, to_hz)
    resolution_hz = 2.0 * to_hz / len(out)
    assert abs(_peak_hz(out, to_hz) - tone_hz) <= resolution_hz
    ideal = np.sin(2 * np.pi * tone_hz * np.arange(len(out)) / to_hz)
    inner = slice(len(out) // 10, -len(out) // 10)
    assert np.max(np.abs(out[inner] - ideal[inner])) < 0.01
