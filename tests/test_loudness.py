"""Audible spans: sample-exact edges at the audible level, gaps merged as asked."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from duplexer.kernels.loudness import AUDIBLE_DBFS, audible_spans, trim_quiet_pcm16

RATE_HZ = 16_000


def test_edges_are_the_first_and_last_sample_at_the_audible_level() -> None:
    x = np.zeros(RATE_HZ, dtype=np.float32)
    x[4003:8001] = 0.5
    x[4003] = 10 ** (AUDIBLE_DBFS / 20) * 1.01  # just audible
    x[3000] = 10 ** (AUDIBLE_DBFS / 20) * 0.9  # just not
    assert audible_spans(x, RATE_HZ) == [(4003 / 16.0, 8001 / 16.0)]


def test_int16_and_float_agree_and_silence_has_no_spans() -> None:
    x = np.zeros(4800, dtype=np.int16)
    assert audible_spans(x, RATE_HZ) == []
    x[1600:3200] = 8000
    assert audible_spans(x, RATE_HZ) == audible_spans(x.astype(np.float32) / 32768.0, RATE_HZ)


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 50)), max_size=6), st.sampled_from([0.0, 100.0]))
def test_every_audible_sample_is_inside_a_span_and_spans_are_ordered(
    blocks: list[tuple[int, int]], gap_ms: float
) -> None:
    x = np.zeros(RATE_HZ * 3, dtype=np.float32)
    for start, length in blocks:
        x[start * 160 : (start + length) * 160] = 0.3
    spans = audible_spans(x, RATE_HZ, max_gap_ms=gap_ms)
    loud = np.flatnonzero(x > 0)
    assert all(any(s <= 1000 * i / RATE_HZ < e for s, e in spans) for i in loud[::97])
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))


@given(
    st.integers(0, 8000),
    st.integers(1, 8000),
    st.integers(0, 8000),
    st.sampled_from([0.0, 10.0]),
    st.sampled_from([0.0, 150.0]),
)
def test_trimming_keeps_every_audible_sample_and_at_most_the_margins(
    lead: int, loud: int, trail: int, keep_lead_ms: float, keep_trail_ms: float
) -> None:
    x = np.concatenate([np.zeros(lead), np.full(loud, 3000), np.zeros(trail)]).astype("<i2")
    trimmed = np.frombuffer(trim_quiet_pcm16(x.tobytes(), RATE_HZ, keep_lead_ms, keep_trail_ms), dtype="<i2")
    assert np.count_nonzero(trimmed) == loud
    first, last = np.flatnonzero(trimmed)[[0, -1]]
    assert first == min(lead, round(keep_lead_ms * RATE_HZ / 1000))
    assert len(trimmed) - 1 - last == min(trail, round(keep_trail_ms * RATE_HZ / 1000))


def test_trimming_silence_leaves_nothing() -> None:
    assert trim_quiet_pcm16(np.zeros(1600, dtype="<i2").tobytes(), RATE_HZ, 10.0, 150.0) == b""
