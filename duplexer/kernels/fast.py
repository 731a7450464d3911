"""numba kernels: one fused pass per operation; same names, signatures and results as `reference`.

Each operation validates, offsets and places tokens in a single loop. The `*_batch` forms run
one session per `prange` iteration, or the same kernel compiled serially for small batches
(PARALLEL_MIN_TOKENS).
All kernels are `cache=True`, so only the first process on a machine pays the compile;
`compiled_kernels()` lists them for warm-up and timing.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from duplexer.kernels.errors import Fault
from duplexer.kernels.tokens import (
    AUDIO_ID_END,
    AUDIO_ID_OFFSET,
    GROUP_SIZE,
    LINGUISTIC_CODEBOOK_SIZE,
    LINGUISTIC_ID_OFFSET,
    LINGUISTIC_PER_GROUP,
    NO_KIND,
    PAD_ID,
    SEMANTIC_CODEBOOK_SIZE,
    SEMANTIC_ID_OFFSET,
    SEMANTIC_PER_GROUP,
)

IntArray = npt.NDArray[np.int64]

# numba freezes module globals as compile-time constants; plain ints keep that simple.
_NONE = int(Fault.NONE)
_LING_RANGE = int(Fault.LINGUISTIC_CODE_RANGE)
_SEM_RANGE = int(Fault.SEMANTIC_CODE_RANGE)
_ID_RANGE = int(Fault.ID_RANGE)
_ORDER = int(Fault.ORDER)
_AFTER_END = int(Fault.AFTER_STREAM_END)
_NESTED = int(Fault.NESTED_AUDIO_START)
_STRAY_END = int(Fault.STRAY_AUDIO_END)
_AUDIO_OUTSIDE = int(Fault.AUDIO_OUTSIDE_SEGMENT)
_NOT_TEXT = int(Fault.NOT_TEXT_ID)
_NOT_AUDIO = int(Fault.NOT_AUDIO_ID)


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,misc]
def _interleave_row(ling: Any, sem: Any, flush: bool, out: Any) -> Any:
    """Validate + offset + place codes in one pass; returns (n_out, used_l, used_s, fault, idx)."""
    n_ling = ling.shape[0]
    n_sem = sem.shape[0]
    groups = min(n_ling // LINGUISTIC_PER_GROUP, n_sem // SEMANTIC_PER_GROUP)
    bad_l = -1
    bad_s = -1
    pos = 0
    li = 0
    si = 0
    for _ in range(groups):
        for _j in range(LINGUISTIC_PER_GROUP):
            code = ling[li]
            if (code < 0 or code >= LINGUISTIC_CODEBOOK_SIZE) and bad_l < 0:
                bad_l = li
            out[pos] = code + LINGUISTIC_ID_OFFSET
            pos += 1
            li += 1
        for _j in range(SEMANTIC_PER_GROUP):
            code = sem[si]
            if (code < 0 or code >= SEMANTIC_CODEBOOK_SIZE) and bad_s < 0:
                bad_s = si
            out[pos] = code + SEMANTIC_ID_OFFSET
            pos += 1
            si += 1
    used_l = li
    used_s = si
    if flush:
        # Tail: the linguistic slots of the next group, then every semantic code, then the
        # linguistic rest (non-empty only when the semantic stream ran out first).
        head = min(n_ling - li, LINGUISTIC_PER_GROUP)
        order_l0 = li + head
        for i in range(li, order_l0):
            out[pos] = ling[i] + LINGUISTIC_ID_OFFSET
            pos += 1
        for i in range(si, n_sem):
            out[pos] = sem[i] + SEMANTIC_ID_OFFSET
            pos += 1
        for i in range(order_l0, n_ling):
            out[pos] = ling[i] + LINGUISTIC_ID_OFFSET
            pos += 1
        used_l = n_ling
        used_s = n_sem
    # Unplaced (carried) codes are validated too, so a bad code fails the push that brings it.
    for i in range(li, n_ling):
        code = ling[i]
        if (code < 0 or code >= LINGUISTIC_CODEBOOK_SIZE) and bad_l < 0:
            bad_l = i
    for i in range(si, n_sem):
        code = sem[i]
        if (code < 0 or code >= SEMANTIC_CODEBOOK_SIZE) and bad_s < 0:
            bad_s = i
    if bad_l >= 0:
        return 0, 0, 0, _LING_RANGE, bad_l
    if bad_s >= 0:
        return 0, 0, 0, _SEM_RANGE, bad_s
    return pos, used_l, used_s, _NONE, -1


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,misc]
def _deinterleave_row(ids: Any, phase: int, final: bool, ling_out: Any, sem_out: Any) -> Any:
    """Classify, check slot order and strip offsets in one pass; returns (n_l, n_s, fault, idx)."""
    n_ling = 0
    n_sem = 0
    only = NO_KIND
    slot = phase
    for i in range(ids.shape[0]):
        token = ids[i]
        if SEMANTIC_ID_OFFSET <= token < AUDIO_ID_END:
            kind = 1
        elif LINGUISTIC_ID_OFFSET <= token < SEMANTIC_ID_OFFSET:
            kind = 0
        else:
            return 0, 0, _ID_RANGE, i
        if only == NO_KIND:
            due = 0 if slot < LINGUISTIC_PER_GROUP else 1
            if kind != due:
                if not final:
                    return 0, 0, _ORDER, i
                only = kind
            slot += 1
            if slot == GROUP_SIZE:
                slot = 0
        elif kind != only:
            return 0, 0, _AFTER_END, i
        if kind == 0:
            ling_out[n_ling] = token - LINGUISTIC_ID_OFFSET
            n_ling += 1
        else:
            sem_out[n_sem] = token - SEMANTIC_ID_OFFSET
            n_sem += 1
    return n_ling, n_sem, _NONE, -1


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,misc]
def _mux_row(
    text: Any,
    audio: Any,
    start_id: int,
    end_id: int,
    vocab_size: int,
    text_per: int,
    audio_per: int,
    with_markers: bool,
    out: Any,
) -> Any:
    """Validate and merge text/audio by the slot schedule; returns (n_out, fault, idx)."""
    for i in range(text.shape[0]):
        token = text[i]
        if token < 0 or token >= vocab_size or AUDIO_ID_OFFSET <= token < AUDIO_ID_END:
            return 0, _NOT_TEXT, i
        if token == start_id or token == end_id:  # noqa: SIM109 - plain compares for numba
            return 0, _NOT_TEXT, i
    for i in range(audio.shape[0]):
        token = audio[i]
        if token < AUDIO_ID_OFFSET or token >= AUDIO_ID_END:
            return 0, _NOT_AUDIO, i
    cycle = text_per + audio_per
    pos = 0
    if with_markers:
        out[0] = start_id
        pos = 1
    ti = 0
    ai = 0
    slot = 0
    n_text = text.shape[0]
    n_audio = audio.shape[0]
    while ti < n_text and ai < n_audio:
        if slot < text_per:
            out[pos] = text[ti]
            ti += 1
        else:
            out[pos] = audio[ai]
            ai += 1
        pos += 1
        slot += 1
        if slot == cycle:
            slot = 0
    for i in range(ti, n_text):
        out[pos] = text[i]
        pos += 1
    for i in range(ai, n_audio):
        out[pos] = audio[i]
        pos += 1
    if with_markers:
        out[pos] = end_id
        pos += 1
    return pos, _NONE, -1


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,misc]
def _demux_row(
    ids: Any,
    start_id: int,
    end_id: int,
    vocab_size: int,
    text_per: int,
    audio_per: int,
    in_segment: bool,
    slot: int,
    only: int,
    text_out: Any,
    audio_out: Any,
) -> Any:
    """Run the AQAA state machine over ids; returns (n_t, n_a, in_seg, slot, only, fault, idx)."""
    cycle = text_per + audio_per
    n_text = 0
    n_audio = 0
    for i in range(ids.shape[0]):
        token = ids[i]
        if token < 0 or token >= vocab_size:
            return 0, 0, False, 0, NO_KIND, _ID_RANGE, i
        if token == start_id:
            if in_segment:
                return 0, 0, False, 0, NO_KIND, _NESTED, i
            in_segment = True
            slot = 0
            only = NO_KIND
            continue
        if token == end_id:
            if not in_segment:
                return 0, 0, False, 0, NO_KIND, _STRAY_END, i
            in_segment = False
            slot = 0
            only = NO_KIND
            continue
        kind = 1 if AUDIO_ID_OFFSET <= token < AUDIO_ID_END else 0
        if not in_segment:
            if kind == 1:
                return 0, 0, False, 0, NO_KIND, _AUDIO_OUTSIDE, i
        elif only == NO_KIND:
            due = 0 if slot < text_per else 1
            if kind != due:
                only = kind
                slot = 0
            else:
                slot += 1
                if slot == cycle:
                    slot = 0
        elif kind != only:
            return 0, 0, False, 0, NO_KIND, _AFTER_END, i
        if kind == 0:
            text_out[n_text] = token
            n_text += 1
        else:
            audio_out[n_audio] = token
            n_audio += 1
    return n_text, n_audio, in_segment, slot, only, _NONE, -1


# Batched kernels are compiled twice from one definition: with `prange` over sessions, and as a
# serial loop (numba runs `prange` as `range` without parallel=True). Handing a parallel region
# to the thread pool costs microseconds, and milliseconds when another process holds a core (a
# pool thread is descheduled and the region waits for it), so batches below PARALLEL_MIN_TOKENS
# run serially; batching, not threads, is what removes per-call overhead.

PARALLEL_MIN_TOKENS = 1 << 16
"""Batches with fewer tokens than this run on the serial twin unless `parallel=True`."""


def _use_parallel(parallel: bool | None, tokens: int) -> bool:
    """Explicit choice, else parallel only for batches big enough to amortise the pool."""
    return tokens >= PARALLEL_MIN_TOKENS if parallel is None else parallel


def _compiled_twice(kernel: Callable[..., None]) -> tuple[Any, Any]:
    """(serial, parallel) dispatchers of one batched kernel.

    numba keys its on-disk cache by the function's qualified name and line, not by its options
    (numba issue 6845), so the serial compilation gets a copy of the function under a name of
    its own; otherwise one process would load the other's machine code from the cache.
    """
    serial = types.FunctionType(kernel.__code__, kernel.__globals__, kernel.__name__ + "_serial")
    serial.__qualname__ = kernel.__qualname__ + "_serial"
    serial.__doc__ = kernel.__doc__
    return njit(cache=True, nogil=True)(serial), njit(cache=True, parallel=True)(kernel)


def _interleave_batch(
    ling: Any,
    ling_len: Any,
    sem: Any,
    sem_len: Any,
    flush: bool,
    out: Any,
    out_len: Any,
    used_l: Any,
    used_s: Any,
    faults: Any,
    index: Any,
) -> None:
    """One session per iteration; rows of `out` are padded with PAD_ID."""
    for b in prange(ling.shape[0]):
        n, ul, us, fault, idx = _interleave_row(ling[b, : ling_len[b]], sem[b, : sem_len[b]], flush, out[b])
        out_len[b] = n
        used_l[b] = ul
        used_s[b] = us
        faults[b] = fault
        index[b] = idx
        out[b, n:] = PAD_ID


def _deinterleave_batch(
    ids: Any,
    id_len: Any,
    phases: Any,
    final: bool,
    ling_out: Any,
    ling_len: Any,
    sem_out: Any,
    sem_len: Any,
    faults: Any,
    index: Any,
) -> None:
    """One session per iteration; output rows are padded with PAD_ID."""
    for b in prange(ids.shape[0]):
        nl, ns, fault, idx = _deinterleave_row(ids[b, : id_len[b]], phases[b], final, ling_out[b], sem_out[b])
        ling_len[b] = nl
        sem_len[b] = ns
        faults[b] = fault
        index[b] = idx
        ling_out[b, nl:] = PAD_ID
        sem_out[b, ns:] = PAD_ID


def _demux_batch(
    ids: Any,
    id_len: Any,
    start_id: int,
    end_id: int,
    vocab_size: int,
    text_per: int,
    audio_per: int,
    in_segment: Any,
    slot: Any,
    only: Any,
    text_out: Any,
    text_len: Any,
    audio_out: Any,
    audio_len: Any,
    faults: Any,
    index: Any,
) -> None:
    """One session per iteration; state advances only for sessions without a fault."""
    for b in prange(ids.shape[0]):
        nt, na, seg, new_slot, new_only, fault, idx = _demux_row(
            ids[b, : id_len[b]],
            start_id,
            end_id,
            vocab_size,
            text_per,
            audio_per,
            in_segment[b],
            slot[b],
            only[b],
            text_out[b],
            audio_out[b],
        )
        if fault == _NONE:
            in_segment[b] = seg
            slot[b] = new_slot
            only[b] = new_only
        text_len[b] = nt
        audio_len[b] = na
        faults[b] = fault
        index[b] = idx
        text_out[b, nt:] = PAD_ID
        audio_out[b, na:] = PAD_ID


_interleave_batch_serial, _interleave_batch_parallel = _compiled_twice(_interleave_batch)
_deinterleave_batch_serial, _deinterleave_batch_parallel = _compiled_twice(_deinterleave_batch)
_demux_batch_serial, _demux_batch_parallel = _compiled_twice(_demux_batch)


# --- wrappers with the same signatures and results as `reference` --------------------------


def interleave(ling: IntArray, sem: IntArray, flush: bool) -> tuple[IntArray, int, int, int, int]:
    """Codes -> LLM ids; see `reference.interleave`."""
    out = np.empty(ling.shape[0] + sem.shape[0], dtype=np.int64)
    n, used_l, used_s, fault, index = _interleave_row(ling, sem, flush, out)
    return out[:n], int(used_l), int(used_s), int(fault), int(index)


def deinterleave(ids: IntArray, phase: int, final: bool) -> tuple[IntArray, IntArray, int, int]:
    """LLM ids -> codes; see `reference.deinterleave`."""
    ling = np.empty(ids.shape[0], dtype=np.int64)
    sem = np.empty(ids.shape[0], dtype=np.int64)
    n_ling, n_sem, fault, index = _deinterleave_row(ids, phase, final, ling, sem)
    return ling[:n_ling], sem[:n_sem], int(fault), int(index)


def aqaa_mux(
    text: IntArray,
    audio: IntArray,
    start_id: int,
    end_id: int,
    vocab_size: int,
    text_per: int,
    audio_per: int,
    with_markers: bool,
) -> tuple[IntArray, int, int]:
    """Text + audio ids -> one AQAA segment; see `reference.aqaa_mux`."""
    out = np.empty(text.shape[0] + audio.shape[0] + 2, dtype=np.int64)
    n, fault, index = _mux_row(text, audio, start_id, end_id, vocab_size, text_per, audio_per, with_markers, out)
    return out[:n], int(fault), int(index)


def aqaa_demux(
    ids: IntArray,
    start_id: int,
    end_id: int,
    vocab_size: int,
    text_per: int,
    audio_per: int,
    in_segment: bool,
    slot: int,
    only: int,
) -> tuple[IntArray, IntArray, bool, int, int, int, int]:
    """AQAA ids -> text and audio from a state; see `reference.aqaa_demux`."""
    text = np.empty(ids.shape[0], dtype=np.int64)
    audio = np.empty(ids.shape[0], dtype=np.int64)
    n_text, n_audio, seg, new_slot, new_only, fault, index = _demux_row(
        ids, start_id, end_id, vocab_size, text_per, audio_per, in_segment, slot, only, text, audio
    )
    return (
        text[:n_text],
        audio[:n_audio],
        bool(seg),
        int(new_slot),
        int(new_only),
        int(fault),
        int(index),
    )


def interleave_batch(
    ling: IntArray,
    ling_len: IntArray,
    sem: IntArray,
    sem_len: IntArray,
    flush: bool,
    parallel: bool | None = None,
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Batched `interleave`; `parallel` None picks prange by batch size (PARALLEL_MIN_TOKENS)."""
    n = ling.shape[0]
    out = np.empty((n, ling.shape[1] + sem.shape[1]), dtype=np.int64)
    out_len, used_l, used_s = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    faults, index = np.empty(n, np.int64), np.empty(n, np.int64)
    tokens = int(ling_len.sum() + sem_len.sum())
    kernel = _interleave_batch_parallel if _use_parallel(parallel, tokens) else _interleave_batch_serial
    kernel(ling, ling_len, sem, sem_len, flush, out, out_len, used_l, used_s, faults, index)
    return out, out_len, used_l, used_s, faults, index


def deinterleave_batch(
    ids: IntArray, id_len: IntArray, phases: IntArray, final: bool, parallel: bool | None = None
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Batched `deinterleave`; `parallel` None picks prange by batch size (PARALLEL_MIN_TOKENS)."""
    n, width = ids.shape
    ling, sem = np.empty((n, width), np.int64), np.empty((n, width), np.int64)
    ling_len, sem_len = np.empty(n, np.int64), np.empty(n, np.int64)
    faults, index = np.empty(n, np.int64), np.empty(n, np.int64)
    parallel = _use_parallel(parallel, int(id_len.sum()))
    kernel = _deinterleave_batch_parallel if parallel else _deinterleave_batch_serial
    kernel(ids, id_len, phases, final, ling, ling_len, sem, sem_len, faults, index)
    return ling, ling_len, sem, sem_len, faults, index


def aqaa_demux_batch(
    ids: IntArray,
    id_len: IntArray,
    start_id: int,
    end_id: int,
    vocab_size: int,
    text_per: int,
    audio_per: int,
    in_segment: npt.NDArray[np.bool_],
    slot: IntArray,
    only: IntArray,
    parallel: bool | None = None,
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Batched `aqaa_demux`; `parallel` None picks prange by batch size (PARALLEL_MIN_TOKENS)."""
    n, width = ids.shape
    text, audio = np.empty((n, width), np.int64), np.empty((n, width), np.int64)
    text_len, audio_len = np.empty(n, np.int64), np.empty(n, np.int64)
    faults, index = np.empty(n, np.int64), np.empty(n, np.int64)
    kernel = _demux_batch_parallel if _use_parallel(parallel, int(id_len.sum())) else _demux_batch_serial
    kernel(
        ids,
        id_len,
        start_id,
        end_id,
        vocab_size,
        text_per,
        audio_per,
        in_segment,
        slot,
        only,
        text,
        text_len,
        audio,
        audio_len,
        faults,
        index,
    )
    return text, text_len, audio, audio_len, faults, index


def compiled_kernels() -> dict[str, Any]:
    """The numba dispatchers by name, for warm-up and compile/cache statistics."""
    return {
        "interleave": _interleave_row,
        "deinterleave": _deinterleave_row,
        "aqaa_mux": _mux_row,
        "aqaa_demux": _demux_row,
        "interleave_batch (prange)": _interleave_batch_parallel,
        "deinterleave_batch (prange)": _deinterleave_batch_parallel,
        "aqaa_demux_batch (prange)": _demux_batch_parallel,
        "interleave_batch (serial)": _interleave_batch_serial,
        "deinterleave_batch (serial)": _deinterleave_batch_serial,
        "aqaa_demux_batch (serial)": _demux_batch_serial,
    }
