"""Specification of the batched (many sessions per call) kernels: numba prange vs per-session NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.kernels import (
    AqaaConfig,
    AqaaDemuxer,
    BatchAqaaDemuxer,
    TokenOrderError,
    TokenRangeError,
    aqaa_mux,
    deinterleave,
    deinterleave_batch,
    fast,
    interleave,
    interleave_batch,
    reference,
    split_rows,
)
from duplexer.kernels.errors import Fault
from duplexer.kernels.tokens import (
    AUDIO_ID_END,
    AUDIO_ID_OFFSET,
    DEFAULT_AUDIO_START_ID,
    LINGUISTIC_CODEBOOK_SIZE,
    PAD_ID,
    SEMANTIC_CODEBOOK_SIZE,
)

FAST = settings(max_examples=80, deadline=None)
BACKENDS = ["numpy", "numba"]


def padded(rows: list[list[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows -> (PAD_ID-padded 2-D array, lengths)."""
    lengths = np.array([len(r) for r in rows], np.int64)
    out = np.full((len(rows), width or max([1, *lengths.tolist()])), PAD_ID, np.int64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out, lengths


sessions_codes = st.lists(
    st.tuples(
        st.lists(st.integers(-1, LINGUISTIC_CODEBOOK_SIZE), max_size=12),
        st.lists(st.integers(-1, SEMANTIC_CODEBOOK_SIZE), max_size=18),
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("parallel", [True, False])
@FAST
@given(sessions=sessions_codes, flush=st.booleans())
def test_numba_batched_interleave_equals_the_per_session_reference(
    parallel: bool, sessions: list[tuple[list[int], list[int]]], flush: bool
) -> None:
    ling, ling_len = padded([s[0] for s in sessions])
    sem, sem_len = padded([s[1] for s in sessions])
    want = reference.interleave_batch(ling, ling_len, sem, sem_len, flush)
    got = fast.interleave_batch(ling, ling_len, sem, sem_len, flush, parallel)
    for w, g in zip(want, got, strict=True):
        assert g.tolist() == w.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(
    sessions=st.lists(
        st.tuples(
            st.lists(st.integers(0, LINGUISTIC_CODEBOOK_SIZE - 1), max_size=12),
            st.lists(st.integers(0, SEMANTIC_CODEBOOK_SIZE - 1), max_size=18),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_batched_round_trip_matches_one_shot_per_session(
    backend: str, sessions: list[tuple[list[int], list[int]]]
) -> None:
    ling, ling_len = padded([s[0] for s in sessions])
    sem, sem_len = padded([s[1] for s in sessions])
    batch = interleave_batch(ling, ling_len, sem, sem_len, backend=backend)  # type: ignore[arg-type]
    assert not batch.faults.any
    for b, (l_codes, s_codes) in enumerate(sessions):
        row = batch.ids[b]
        assert row[: batch.lengths[b]].tolist() == interleave(l_codes, s_codes).tolist()
        assert (row[batch.lengths[b] :] == PAD_ID).all()
    back = deinterleave_batch(batch.ids, batch.lengths, backend=backend)  # type: ignore[arg-type]
    assert [r.tolist() for r in split_rows(back.ling_codes, back.ling_lengths)] == [s[0] for s in sessions]
    assert [r.tolist() for r in split_rows(back.sem_codes, back.sem_lengths)] == [s[1] for s in sessions]


id_rows = st.lists(
    st.lists(
        st.one_of(
            st.integers(AUDIO_ID_OFFSET, AUDIO_ID_OFFSET + 3),
            st.integers(AUDIO_ID_END - 3, AUDIO_ID_END),
        ),
        max_size=15,
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("parallel", [True, False])
@FAST
@given(rows=id_rows, final=st.booleans(), data=st.data())
def test_numba_batched_deinterleave_equals_the_per_session_reference(
    parallel: bool, rows: list[list[int]], final: bool, data: st.DataObject
) -> None:
    ids, lengths = padded(rows)
    phases = np.array(data.draw(st.lists(st.integers(0, 4), min_size=len(rows), max_size=len(rows))))
    want = reference.deinterleave_batch(ids, lengths, phases, final)
    got = fast.deinterleave_batch(ids, lengths, phases, final, parallel)
    for w, g in zip(want, got, strict=True):
        assert g.tolist() == w.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_faulty_session_is_reported_alone_and_the_others_are_served(backend: str) -> None:
    good = interleave([1, 2], [3, 4, 5]).tolist()
    ids, lengths = padded([good, [good[0], good[2]], good])
    result = deinterleave_batch(ids, lengths, final=False, backend=backend)  # type: ignore[arg-type]
    assert result.faults.codes.tolist() == [Fault.NONE, Fault.ORDER, Fault.NONE]
    assert result.ling_lengths.tolist() == [2, 0, 2]
    errors = result.faults.errors()
    assert list(errors) == [1]
    assert isinstance(errors[1], TokenOrderError)
    assert str(errors[1]).startswith("session 1: position 1: semantic id 66563")
    with pytest.raises(TokenOrderError, match="session 1"):
        result.faults.raise_first()


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_interleave_names_the_session_with_a_bad_code(backend: str) -> None:
    ling, ling_len = padded([[1, 2], [1, 2]])
    sem, sem_len = padded([[1, 2, 3], [1, 9999, 3]])
    result = interleave_batch(ling, ling_len, sem, sem_len, backend=backend)  # type: ignore[arg-type]
    assert result.lengths.tolist() == [5, 0]
    with pytest.raises(TokenRangeError, match="session 1: semantic code 9999 at index 1"):
        result.faults.raise_first()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unflushed_batched_interleave_reports_what_each_session_used(backend: str) -> None:
    ling, ling_len = padded([[1, 2, 3], [1]])
    sem, sem_len = padded([[1, 2, 3, 4], [1, 2, 3]])
    result = interleave_batch(ling, ling_len, sem, sem_len, flush=False, backend=backend)  # type: ignore[arg-type]
    assert result.lengths.tolist() == [5, 0]
    assert result.ling_used.tolist() == [2, 0]
    assert result.sem_used.tolist() == [3, 0]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(
    streams=st.lists(
        st.tuples(
            st.lists(st.integers(0, 40), max_size=30),
            st.lists(st.integers(AUDIO_ID_OFFSET, AUDIO_ID_OFFSET + 40), max_size=45),
        ),
        min_size=1,
        max_size=5,
    ),
    step_tokens=st.integers(1, 12),
)
def test_batch_demuxer_equals_one_demuxer_per_session(
    backend: str, streams: list[tuple[list[int], list[int]]], step_tokens: int
) -> None:
    muxed = [aqaa_mux(t, a).tolist() for t, a in streams]
    batch = BatchAqaaDemuxer(len(streams), backend=backend)  # type: ignore[arg-type]
    singles = [AqaaDemuxer() for _ in streams]
    longest = max(len(m) for m in muxed)
    for start in range(0, longest, step_tokens):
        chunks = [m[start : start + step_tokens] for m in muxed]
        ids, lengths = padded(chunks, step_tokens)
        result = batch.push(ids, lengths, parallel=backend == "numba")  # prange twin here
        assert not result.faults.any
        for b, chunk in enumerate(chunks):
            text, audio = singles[b].push(chunk)
            assert result.text_ids[b, : result.text_lengths[b]].tolist() == text.tolist()
            assert result.audio_ids[b, : result.audio_lengths[b]].tolist() == audio.tolist()
    batch.close()
    assert not batch.in_segment.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_demuxer_keeps_a_faulty_sessions_state_and_names_its_stream_position(
    backend: str,
) -> None:
    start = DEFAULT_AUDIO_START_ID
    batch = BatchAqaaDemuxer(2, backend=backend)  # type: ignore[arg-type]
    batch.push(*padded([[start, 1], [start, 1]]))
    result = batch.push(*padded([[2, 3], [AUDIO_ID_OFFSET, 4]]))
    assert result.faults.codes.tolist() == [Fault.NONE, Fault.AFTER_STREAM_END]
    assert result.faults.indices.tolist() == [-1, 3]
    assert "session 1: position 3: text id 4" in str(result.faults.errors()[1])
    again = batch.push(*padded([[5], [6]]))
    assert again.text_lengths.tolist() == [1, 1]  # session 1 resumed from its old state


@pytest.mark.parametrize("parallel", [True, False])
def test_batch_numba_demux_equals_numpy_with_faults_and_states(parallel: bool) -> None:
    cfg = AqaaConfig()
    args = (cfg.audio_start_id, cfg.audio_end_id, cfg.vocab_size, 10, 15)
    rng = np.random.default_rng(7)
    choices = np.array([1, 2, AUDIO_ID_OFFSET, AUDIO_ID_OFFSET + 1, *args[:2], cfg.vocab_size, -1], np.int64)
    for _ in range(30):
        ids = rng.choice(choices, size=(8, 10))
        lengths = rng.integers(0, 11, 8)
        seg, slot, only = rng.random(8) < 0.5, rng.integers(0, 25, 8), rng.integers(-1, 2, 8)
        ref_state = (seg.copy(), slot.copy(), only.copy())
        want = reference.aqaa_demux_batch(ids, lengths, *args, *ref_state)
        got = fast.aqaa_demux_batch(ids, lengths, *args, seg, slot, only, parallel)
        for w, g in zip(want, got, strict=True):
            assert g.tolist() == w.tolist()
        assert [x.tolist() for x in (seg, slot, only)] == [x.tolist() for x in ref_state]


def test_batched_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="2-D"):
        deinterleave_batch([1, 2, 3], [3])
    with pytest.raises(ValueError, match="lengths must lie in"):
        deinterleave_batch([[65536]], [2])
    with pytest.raises(ValueError, match="one row per session"):
        BatchAqaaDemuxer(2).push([[1]], [1])


def test_one_shot_deinterleave_of_a_batch_row_matches() -> None:
    ids = interleave([1, 2, 3], [4, 5, 6, 7])
    result = deinterleave_batch(ids[None, :], [len(ids)])
    want = deinterleave(ids)
    assert result.ling_codes[0, : result.ling_lengths[0]].tolist() == want[0].tolist()
