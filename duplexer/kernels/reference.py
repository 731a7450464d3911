"""NumPy reference kernels: vectorised, obviously-correct versions the numba kernels must equal.

Every function here has a twin of the same name and signature in `duplexer.kernels.fast`.
Kernels never raise on bad tokens: they return a `Fault` code and the offending index (and,
on a fault, empty outputs and unchanged state) so the two implementations compare exactly.
Inputs are 1-D (or padded 2-D) int64 arrays; `duplexer.kernels.api` does the conversion.
The `parallel` argument of the batch forms only matters to the numba twins and is ignored here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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
_EMPTY: IntArray = np.empty(0, dtype=np.int64)


def _first(mask: npt.NDArray[np.bool_]) -> int:
    """Index of the first True, or -1."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else -1


def schedule_merge(a: IntArray, b: IntArray, a_per: int, b_per: int) -> IntArray:
    """Merge two streams in slots of `a_per` then `b_per`; once one runs out, the rest of the other follows.

    This single rule defines both the 2:3 interleave (with its end-of-stream flush) and the
    AQAA 10:15 text/audio mux. No padding is ever inserted.
    """
    groups = min(a.shape[0] // a_per, b.shape[0] // b_per)
    size = a_per + b_per
    out = np.empty(a.shape[0] + b.shape[0], dtype=np.int64)
    grid = out[: groups * size].reshape(groups, size)
    grid[:, :a_per] = a[: groups * a_per].reshape(groups, a_per)
    grid[:, a_per:] = b[: groups * b_per].reshape(groups, b_per)
    # After the last complete group at most one stream still fills its slot: the tail is
    # a[:min(ra, a_per)], then all of b's rest, then a's rest (empty unless b ran out).
    rest_a, rest_b = a[groups * a_per :], b[groups * b_per :]
    head = min(rest_a.shape[0], a_per)
    pos = groups * size
    out[pos : pos + head] = rest_a[:head]
    pos += head
    out[pos : pos + rest_b.shape[0]] = rest_b
    pos += rest_b.shape[0]
    out[pos:] = rest_a[head:]
    return out


def interleave(ling: IntArray, sem: IntArray, flush: bool) -> tuple[IntArray, int, int, int, int]:
    """Codes -> LLM ids: complete 2:3 groups, plus (if `flush`) the tail by `schedule_merge`.

    Returns (ids, linguistic codes used, semantic codes used, fault, fault index). Every given
    code is validated, used or not; a linguistic fault is reported before a semantic one.
    """
    bad = _first((ling < 0) | (ling >= LINGUISTIC_CODEBOOK_SIZE))
    if bad >= 0:
        return _EMPTY, 0, 0, Fault.LINGUISTIC_CODE_RANGE, bad
    bad = _first((sem < 0) | (sem >= SEMANTIC_CODEBOOK_SIZE))
    if bad >= 0:
        return _EMPTY, 0, 0, Fault.SEMANTIC_CODE_RANGE, bad
    if flush:
        ids = schedule_merge(
            ling + LINGUISTIC_ID_OFFSET,
            sem + SEMANTIC_ID_OFFSET,
            LINGUISTIC_PER_GROUP,
            SEMANTIC_PER_GROUP,
        )
        return ids, ling.shape[0], sem.shape[0], Fault.NONE, -1
    groups = min(ling.shape[0] // LINGUISTIC_PER_GROUP, sem.shape[0] // SEMANTIC_PER_GROUP)
    n_ling, n_sem = groups * LINGUISTIC_PER_GROUP, groups * SEMANTIC_PER_GROUP
    ids = schedule_merge(
        ling[:n_ling] + LINGUISTIC_ID_OFFSET,
        sem[:n_sem] + SEMANTIC_ID_OFFSET,
        LINGUISTIC_PER_GROUP,
        SEMANTIC_PER_GROUP,
    )
    return ids, n_ling, n_sem, Fault.NONE, -1


def _split_by_schedule(
    kinds: IntArray, slot: int, only: int, a_per: int, cycle: int, tail_allowed: bool
) -> tuple[int, int, int, int]:
    """Check kinds (0 = first stream, 1 = second) against the slot schedule from `slot`.

    A kind other than the one due either is an ORDER fault (`tail_allowed` False) or ends the
    due stream: `only` becomes that kind and every later token must have it (else
    AFTER_STREAM_END). Returns (new slot, new only, fault, index); setting `only` zeroes slot.
    """
    n = kinds.shape[0]
    start = 0
    if only == NO_KIND:
        due = ((slot + np.arange(n)) % cycle >= a_per).astype(np.int64)
        q0 = _first(kinds != due)
        if q0 < 0:
            return (slot + n) % cycle, NO_KIND, Fault.NONE, -1
        if not tail_allowed:
            return slot, only, Fault.ORDER, q0
        only, slot, start = int(kinds[q0]), 0, q0 + 1
    bad = _first(kinds[start:] != only)
    if bad >= 0:
        return slot, only, Fault.AFTER_STREAM_END, start + bad
    return slot, only, Fault.NONE, -1


def deinterleave(ids: IntArray, phase: int, final: bool) -> tuple[IntArray, IntArray, int, int]:
    """LLM ids -> (linguistic codes, semantic codes, fault, index), starting at group slot `phase`.

    Not `final`: ids must follow the 2:3 group order exactly (a trailing partial group is
    fine). `final`: the ids may end with the flushed tail of `interleave`.
    """
    is_ling = (ids >= LINGUISTIC_ID_OFFSET) & (ids < SEMANTIC_ID_OFFSET)
    is_sem = (ids >= SEMANTIC_ID_OFFSET) & (ids < AUDIO_ID_END)
    bad = _first(~(is_ling | is_sem))
    limit = ids.shape[0] if bad < 0 else bad
    kinds = is_sem[:limit].astype(np.int64)
    _, _, fault, index = _split_by_schedule(kinds, phase, NO_KIND, LINGUISTIC_PER_GROUP, GROUP_SIZE, final)
    if fault != Fault.NONE:
        return _EMPTY, _EMPTY, fault, index
    if bad >= 0:
        return _EMPTY, _EMPTY, Fault.ID_RANGE, bad
    return ids[is_ling] - LINGUISTIC_ID_OFFSET, ids[is_sem] - SEMANTIC_ID_OFFSET, Fault.NONE, -1


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
    """Text + audio ids -> one AQAA segment (ids, fault, index); when text runs out, audio fills."""
    not_text = (
        (text < 0)
        | (text >= vocab_size)
        | ((text >= AUDIO_ID_OFFSET) & (text < AUDIO_ID_END))
        | (text == start_id)
        | (text == end_id)
    )
    bad = _first(not_text)
    if bad >= 0:
        return _EMPTY, Fault.NOT_TEXT_ID, bad
    bad = _first((audio < AUDIO_ID_OFFSET) | (audio >= AUDIO_ID_END))
    if bad >= 0:
        return _EMPTY, Fault.NOT_AUDIO_ID, bad
    body = schedule_merge(text, audio, text_per, audio_per)
    if not with_markers:
        return body, Fault.NONE, -1
    return np.concatenate(([start_id], body, [end_id])).astype(np.int64), Fault.NONE, -1


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
    """AQAA ids -> (text, audio, in_segment, slot, only, fault, index) from the given state.

    Outside a segment only text ids and `<audio_start>` are accepted. Inside, slots follow
    text_per text then audio_per audio; an id of the other kind in a slot ends the due
    stream for the rest of the segment. `<audio_end>` closes the segment.
    """
    cycle = text_per + audio_per
    bad_range = _first((ids < 0) | (ids >= vocab_size))
    limit = ids.shape[0] if bad_range < 0 else bad_range
    x = ids[:limit]
    is_start, is_end = x == start_id, x == end_id
    is_audio = (x >= AUDIO_ID_OFFSET) & (x < AUDIO_ID_END)
    texts: list[IntArray] = []
    audios: list[IntArray] = []
    prev = 0
    for stop in [*np.flatnonzero(is_start | is_end).tolist(), limit]:
        body_audio = is_audio[prev:stop]
        if body_audio.shape[0]:
            if not in_segment:
                stray = _first(body_audio)
                if stray >= 0:
                    return _EMPTY, _EMPTY, False, 0, NO_KIND, Fault.AUDIO_OUTSIDE_SEGMENT, prev + stray
            else:
                slot, only, fault, index = _split_by_schedule(
                    body_audio.astype(np.int64), slot, only, text_per, cycle, True
                )
                if fault != Fault.NONE:
                    return _EMPTY, _EMPTY, False, 0, NO_KIND, fault, prev + index
            body = x[prev:stop]
            texts.append(body[~body_audio])
            audios.append(body[body_audio])
        if stop == limit:
            break
        if is_start[stop]:
            if in_segment:
                return _EMPTY, _EMPTY, False, 0, NO_KIND, Fault.NESTED_AUDIO_START, stop
            in_segment = True
        elif not in_segment:
            return _EMPTY, _EMPTY, False, 0, NO_KIND, Fault.STRAY_AUDIO_END, stop
        else:
            in_segment = False
        slot, only = 0, NO_KIND
        prev = stop + 1
    if bad_range >= 0:
        return _EMPTY, _EMPTY, False, 0, NO_KIND, Fault.ID_RANGE, bad_range
    text = np.concatenate(texts) if texts else _EMPTY
    audio = np.concatenate(audios) if audios else _EMPTY
    return text, audio, in_segment, slot, only, Fault.NONE, -1


def _pad_rows(rows: list[IntArray], width: int) -> tuple[IntArray, IntArray]:
    """Stack rows into a PAD_ID-padded [len(rows), width] array plus their lengths."""
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
        lengths[b] = row.shape[0]
    return out, lengths


def interleave_batch(
    ling: IntArray,
    ling_len: IntArray,
    sem: IntArray,
    sem_len: IntArray,
    flush: bool,
    parallel: bool | None = None,
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Per-session `interleave` over padded rows: (ids, id_len, ling_used, sem_used, faults, index)."""
    n = ling.shape[0]
    rows: list[IntArray] = []
    used_l, used_s = np.zeros(n, np.int64), np.zeros(n, np.int64)
    faults, index = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    for b in range(n):
        ids, used_l[b], used_s[b], faults[b], index[b] = interleave(ling[b, : ling_len[b]], sem[b, : sem_len[b]], flush)
        rows.append(ids)
    out, out_len = _pad_rows(rows, ling.shape[1] + sem.shape[1])
    return out, out_len, used_l, used_s, faults, index


def deinterleave_batch(
    ids: IntArray, id_len: IntArray, phases: IntArray, final: bool, parallel: bool | None = None
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Per-session `deinterleave`: (ling, ling_len, sem, sem_len, faults, index), rows padded."""
    n = ids.shape[0]
    ling_rows: list[IntArray] = []
    sem_rows: list[IntArray] = []
    faults, index = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    for b in range(n):
        ling, sem, faults[b], index[b] = deinterleave(ids[b, : id_len[b]], int(phases[b]), final)
        ling_rows.append(ling)
        sem_rows.append(sem)
    ling_out, ling_len = _pad_rows(ling_rows, ids.shape[1])
    sem_out, sem_len = _pad_rows(sem_rows, ids.shape[1])
    return ling_out, ling_len, sem_out, sem_len, faults, index


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
    """Per-session `aqaa_demux`; state arrays advance in place for sessions without a fault."""
    n = ids.shape[0]
    text_rows: list[IntArray] = []
    audio_rows: list[IntArray] = []
    faults, index = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    for b in range(n):
        text, audio, seg, new_slot, new_only, faults[b], index[b] = aqaa_demux(
            ids[b, : id_len[b]],
            start_id,
            end_id,
            vocab_size,
            text_per,
            audio_per,
            bool(in_segment[b]),
            int(slot[b]),
            int(only[b]),
        )
        if faults[b] == Fault.NONE:
            in_segment[b], slot[b], only[b] = seg, new_slot, new_only
        text_rows.append(text)
        audio_rows.append(audio)
    text_out, text_len = _pad_rows(text_rows, ids.shape[1])
    audio_out, audio_len = _pad_rows(audio_rows, ids.shape[1])
    return text_out, text_len, audio_out, audio_len, faults, index
