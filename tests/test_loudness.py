"""Audible spans: sample-exact edges at the audible level, gaps merged as asked."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from duplexer.kernels.loudness import AUDIBLE_DBFS, audible_spans

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
