"""Specification of the 2:3 codec interleave and de-interleave kernels (NumPy and numba)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.kernels import (
    StreamingDeinterleaver,
    StreamingInterleaver,
    TokenOrderError,
    TokenRangeError,
    TokenStreamError,
    deinterleave,
    fast,
    interleave,
    reference,
)
from duplexer.kernels.errors import Fault
from duplexer.kernels.tokens import (
    AUDIO_ID_END,
    GROUP_SIZE,
    LINGUISTIC_CODEBOOK_SIZE,
    LINGUISTIC_ID_OFFSET,
    LINGUISTIC_PER_GROUP,
    LINGUISTIC_RATE_HZ,
    SEMANTIC_CODEBOOK_SIZE,
    SEMANTIC_ID_OFFSET,
    SEMANTIC_RATE_HZ,
)

BACKENDS = ["numpy", "numba"]
FAST = settings(max_examples=150, deadline=None)

ling_codes = st.lists(st.integers(0, LINGUISTIC_CODEBOOK_SIZE - 1), max_size=40)
sem_codes = st.lists(st.integers(0, SEMANTIC_CODEBOOK_SIZE - 1), max_size=60)


@st.composite
def whole_groups(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Codes making whole 2:3 groups."""
    groups = draw(st.integers(0, 15))
    ling = draw(st.lists(st.integers(0, LINGUISTIC_CODEBOOK_SIZE - 1), min_size=2 * groups, max_size=2 * groups))
    sem = draw(st.lists(st.integers(0, SEMANTIC_CODEBOOK_SIZE - 1), min_size=3 * groups, max_size=3 * groups))
    return ling, sem


def cut(values: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    """Split `values` at the given (unsorted, possibly repeated) cut points."""
    points = sorted(min(c, len(values)) for c in cuts)
    return [values[a:b] for a, b in zip([0, *points], [*points, len(values)], strict=True)]


def strict_prefix_length(ids: np.ndarray) -> int:
    """Length of the prefix that follows the 2:3 group order exactly."""
    for i, token in enumerate(ids.tolist()):
        due_ling = i % GROUP_SIZE < LINGUISTIC_PER_GROUP
        if (token < SEMANTIC_ID_OFFSET) != due_ling:
            return i
    return len(ids)


def test_token_facts_match_the_step_audio_format() -> None:
    assert (LINGUISTIC_ID_OFFSET, SEMANTIC_ID_OFFSET - 1) == (65536, 66559)
    assert (SEMANTIC_ID_OFFSET, AUDIO_ID_END - 1) == (66560, 70655)
    assert round(LINGUISTIC_RATE_HZ, 1) == 16.7
    assert SEMANTIC_RATE_HZ == 25.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_group_is_two_linguistic_then_three_semantic_ids_with_offsets(backend: str) -> None:
    ids = interleave([1, 2, 3, 4], [10, 11, 12, 13, 14, 15], backend=backend)  # type: ignore[arg-type]
    assert ids.tolist() == [
        65537, 65538, 66570, 66571, 66572,
        65539, 65540, 66573, 66574, 66575,
    ]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_flushed_tail_continues_group_order_then_the_longer_stream(backend: str) -> None:
    # 5 linguistic, 1 semantic: L L S, then the semantic stream is out, so L L L follow.
    ids = interleave([0, 1, 2, 3, 4], [7], backend=backend)  # type: ignore[arg-type]
    assert (ids - LINGUISTIC_ID_OFFSET).tolist() == [0, 1, 1024 + 7, 2, 3, 4]
    # 1 linguistic, 4 semantic: L, then the linguistic stream is out, so S S S S follow.
    ids = interleave([9], [0, 1, 2, 3], backend=backend)  # type: ignore[arg-type]
    assert (ids - LINGUISTIC_ID_OFFSET).tolist() == [9, 1024, 1025, 1026, 1027]


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(ling=ling_codes, sem=sem_codes)
def test_deinterleave_inverts_interleave_for_any_lengths(backend: str, ling: list[int], sem: list[int]) -> None:
    ids = interleave(ling, sem, backend=backend)  # type: ignore[arg-type]
    assert len(ids) == len(ling) + len(sem)
    got_ling, got_sem = deinterleave(ids, backend=backend)  # type: ignore[arg-type]
    assert got_ling.tolist() == ling
    assert got_sem.tolist() == sem


@FAST
@given(ling=ling_codes, sem=sem_codes, flush=st.booleans())
def test_numba_interleave_equals_numpy_reference(ling: list[int], sem: list[int], flush: bool) -> None:
    a, b = np.array(ling, np.int64), np.array(sem, np.int64)
    want, got = reference.interleave(a, b, flush), fast.interleave(a, b, flush)
    assert got[0].tolist() == want[0].tolist()
    assert got[1:] == want[1:]


@FAST
@given(
    ling=st.lists(st.integers(-3, LINGUISTIC_CODEBOOK_SIZE + 3), max_size=20),
    sem=st.lists(st.integers(-3, SEMANTIC_CODEBOOK_SIZE + 3), max_size=30),
    flush=st.booleans(),
)
def test_numba_interleave_reports_the_same_fault_as_numpy(ling: list[int], sem: list[int], flush: bool) -> None:
    a, b = np.array(ling, np.int64), np.array(sem, np.int64)
    want, got = reference.interleave(a, b, flush), fast.interleave(a, b, flush)
    assert got[0].tolist() == want[0].tolist()
    assert got[1:] == want[1:]


token_ids = st.lists(
    st.one_of(
        st.integers(LINGUISTIC_ID_OFFSET, SEMANTIC_ID_OFFSET - 1),
        st.integers(SEMANTIC_ID_OFFSET, AUDIO_ID_END - 1),
        st.sampled_from([-1, 0, LINGUISTIC_ID_OFFSET - 1, AUDIO_ID_END]),
    ),
    max_size=40,
)


@FAST
@given(ids=token_ids, phase=st.integers(0, GROUP_SIZE - 1), final=st.booleans())
def test_numba_deinterleave_equals_numpy_on_any_ids(ids: list[int], phase: int, final: bool) -> None:
    array = np.array(ids, np.int64)
    want = reference.deinterleave(array, phase, final)
    got = fast.deinterleave(array, phase, final)
    assert [x.tolist() for x in got[:2]] == [x.tolist() for x in want[:2]]
    assert got[2:] == want[2:]


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(
    ling=ling_codes,
    sem=sem_codes,
    ling_cuts=st.lists(st.integers(0, 40), max_size=6),
    sem_cuts=st.lists(st.integers(0, 60), max_size=6),
)
def test_streaming_interleaver_equals_one_shot_for_any_chunking(
    backend: str, ling: list[int], sem: list[int], ling_cuts: list[int], sem_cuts: list[int]
) -> None:
    streamer = StreamingInterleaver(backend=backend)  # type: ignore[arg-type]
    ling_chunks = cut(np.array(ling, np.int64), ling_cuts)
    sem_chunks = cut(np.array(sem, np.int64), sem_cuts)
    pieces = []
    for i in range(max(len(ling_chunks), len(sem_chunks))):
        l_chunk: np.ndarray | list[int] = ling_chunks[i] if i < len(ling_chunks) else []
        s_chunk: np.ndarray | list[int] = sem_chunks[i] if i < len(sem_chunks) else []
        out = streamer.push(l_chunk, s_chunk)
        assert len(out) % GROUP_SIZE == 0  # only complete groups mid-stream
        n_ling, n_sem = streamer.pending
        assert n_ling < 2 or n_sem < 3  # nothing emittable is held back
        pieces.append(out)
    pieces.append(streamer.flush())
    one_shot = interleave(ling, sem, backend=backend)  # type: ignore[arg-type]
    assert np.concatenate(pieces).tolist() == one_shot.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(ling=ling_codes, sem=sem_codes, cuts=st.lists(st.integers(0, 100), max_size=8))
def test_streaming_deinterleaver_equals_one_shot_for_any_chunking_of_the_strict_prefix(
    backend: str, ling: list[int], sem: list[int], cuts: list[int]
) -> None:
    ids = interleave(ling, sem, backend=backend)  # type: ignore[arg-type]
    strict = strict_prefix_length(ids)
    streamer = StreamingDeinterleaver(backend=backend)  # type: ignore[arg-type]
    got_ling, got_sem = [], []
    for chunk in cut(ids[:strict], cuts):
        a, b = streamer.push(chunk)
        got_ling += a.tolist()
        got_sem += b.tolist()
    a, b = streamer.push(ids[strict:], final=True)
    assert (got_ling + a.tolist(), got_sem + b.tolist()) == (ling, sem)


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(whole_groups(), st.lists(st.integers(0, 75), max_size=8))
def test_whole_group_streams_deinterleave_strictly_in_any_chunking(
    backend: str, codes: tuple[list[int], list[int]], cuts: list[int]
) -> None:
    ling, sem = codes
    ids = interleave(ling, sem, backend=backend)  # type: ignore[arg-type]
    streamer = StreamingDeinterleaver(backend=backend)  # type: ignore[arg-type]
    outs = [streamer.push(chunk) for chunk in cut(ids, cuts)]
    assert np.concatenate([o[0] for o in outs]).tolist() == ling
    assert np.concatenate([o[1] for o in outs]).tolist() == sem
    assert streamer.position == len(ids)


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(
    ling=ling_codes,
    sem=sem_codes,
    ling_cuts=st.lists(st.integers(0, 40), max_size=5),
    sem_cuts=st.lists(st.integers(0, 60), max_size=5),
)
def test_streaming_interleaver_output_passes_a_strict_streaming_deinterleaver(
    backend: str, ling: list[int], sem: list[int], ling_cuts: list[int], sem_cuts: list[int]
) -> None:
    interleaver = StreamingInterleaver(backend=backend)  # type: ignore[arg-type]
    deinterleaver = StreamingDeinterleaver(backend=backend)  # type: ignore[arg-type]
    got_ling: list[int] = []
    got_sem: list[int] = []
    ling_chunks = cut(np.array(ling, np.int64), ling_cuts)
    sem_chunks = cut(np.array(sem, np.int64), sem_cuts)
    for l_chunk, s_chunk in zip(ling_chunks, sem_chunks, strict=False):
        a, b = deinterleaver.push(interleaver.push(l_chunk, s_chunk))
        got_ling += a.tolist()
        got_sem += b.tolist()
    rest_l = np.concatenate(ling_chunks[len(sem_chunks) :] or [np.empty(0, np.int64)])
    rest_s = np.concatenate(sem_chunks[len(ling_chunks) :] or [np.empty(0, np.int64)])
    a, b = deinterleaver.push(interleaver.push(rest_l, rest_s))
    c, d = deinterleaver.push(interleaver.flush(), final=True)
    assert got_ling + a.tolist() + c.tolist() == ling
    assert got_sem + b.tolist() + d.tolist() == sem


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("ling", "sem", "message"),
    [
        ([0, 1024], [0, 0, 0], "linguistic code 1024 at index 1 is outside 0..1023"),
        ([-1], [], "linguistic code -1 at index 0"),
        ([0, 0], [0, 4096, 0], "semantic code 4096 at index 1 is outside 0..4095"),
    ],
)
def test_codes_outside_their_codebook_are_rejected_naming_index_and_code(
    backend: str, ling: list[int], sem: list[int], message: str
) -> None:
    with pytest.raises(TokenRangeError, match=message):
        interleave(ling, sem, backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_code_fails_the_push_that_brings_it_with_its_stream_index(backend: str) -> None:
    streamer = StreamingInterleaver(backend=backend)  # type: ignore[arg-type]
    streamer.push([1, 2, 3], [4, 5, 6])
    with pytest.raises(TokenRangeError, match="semantic code 5000 at index 4") as caught:
        streamer.push([], [7, 5000])
    assert caught.value.position == 4
    assert streamer.pending == (1, 0)  # the failed push changed nothing


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_id", [0, 12345, LINGUISTIC_ID_OFFSET - 1, AUDIO_ID_END, -5])
def test_deinterleave_rejects_non_audio_ids_naming_position_and_id(backend: str, bad_id: int) -> None:
    ids = [65536, 65537, 66560, bad_id]
    with pytest.raises(TokenRangeError, match=f"position 3: id {bad_id} is not an audio id") as caught:
        deinterleave(ids, backend=backend)  # type: ignore[arg-type]
    assert (caught.value.position, caught.value.token_id) == (3, bad_id)


@pytest.mark.parametrize("backend", BACKENDS)
def test_semantic_id_where_linguistic_is_due_is_a_token_order_error(backend: str) -> None:
    streamer = StreamingDeinterleaver(backend=backend)  # type: ignore[arg-type]
    streamer.push([65536, 65537, 66560, 66561])
    with pytest.raises(TokenOrderError, match="position 5: semantic id 66563 where a linguistic id is due"):
        streamer.push([66562, 66563])
    assert streamer.position == 4
    assert [x.tolist() for x in streamer.push([66562, 65538])] == [[2], [2]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_linguistic_id_where_semantic_is_due_is_a_token_order_error(backend: str) -> None:
    with pytest.raises(TokenOrderError, match="position 2: linguistic id 65538 where a semantic"):
        deinterleave([65536, 65537, 65538], final=False, backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_final_tail_rejects_a_stream_that_resumes_after_it_ended(backend: str) -> None:
    # L S ends the linguistic stream (a semantic id took a linguistic slot); L again is invalid.
    with pytest.raises(TokenOrderError, match="position 2: linguistic id 65537 after the linguistic"):
        deinterleave([65536, 66560, 65537], backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(codes=whole_groups(), data=st.data())
def test_any_single_corruption_of_a_strict_stream_is_rejected_at_its_position(
    backend: str, codes: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    ids = interleave(*codes, backend=backend)  # type: ignore[arg-type]
    if len(ids) == 0:
        return
    where = data.draw(st.integers(0, len(ids) - 1))
    is_ling = ids[where] < SEMANTIC_ID_OFFSET
    wrong_kind = (
        st.integers(SEMANTIC_ID_OFFSET, AUDIO_ID_END - 1)
        if is_ling
        else st.integers(LINGUISTIC_ID_OFFSET, SEMANTIC_ID_OFFSET - 1)
    )
    bad = data.draw(st.one_of(wrong_kind, st.integers(-10, LINGUISTIC_ID_OFFSET - 1)))
    corrupted = ids.copy()
    corrupted[where] = bad
    with pytest.raises(TokenStreamError) as caught:
        StreamingDeinterleaver(backend=backend).push(corrupted)  # type: ignore[arg-type]
    assert (caught.value.position, caught.value.token_id) == (where, bad)
    assert f"position {where}:" in str(caught.value)
    assert caught.value.fault in (Fault.ORDER, Fault.ID_RANGE)


def test_streams_refuse_pushes_after_they_ended() -> None:
    interleaver = StreamingInterleaver()
    interleaver.flush()
    with pytest.raises(RuntimeError):
        interleaver.push([1], [1])
    deinterleaver = StreamingDeinterleaver()
    deinterleaver.push([], final=True)
    with pytest.raises(RuntimeError):
        deinterleaver.push([65536])


def test_non_integer_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="ling_codes must hold integers"):
        interleave(np.array([1.5, 2.0]), [])
    with pytest.raises(ValueError, match="unknown backend"):
        interleave([], [], backend="fortran")  # type: ignore[arg-type]
