"""Public token kernels: one-shot, streaming and batched forms over a NumPy or numba backend.

Interleave flush rule (end of stream, and the one-shot form): after the last complete 2:3
group, the tail continues the group order and, once one stream is exhausted, the rest of the
other stream follows; nothing is padded or dropped. Concretely the tail is up to 2 remaining
linguistic ids, then all remaining semantic ids, then any remaining linguistic ids.
De-interleave accepts exactly that tail when told the input is final, so
``deinterleave(interleave(l, s)) == (l, s)`` for any lengths.

AQAA demux acceptance: outside a segment, text ids pass to the text stream and
``<audio_start>`` opens a segment; audio ids and ``<audio_end>`` are rejected. Inside a segment
the slots repeat ``text_per_cycle`` text then ``audio_per_cycle`` audio; an id of the other
kind in a slot means the due stream has run out, so every later id of the segment must be of
that other kind. ``<audio_end>`` closes the segment; a nested ``<audio_start>`` is rejected.
Ids outside ``0..vocab_size-1`` are rejected. `aqaa_mux` writes exactly this form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np
import numpy.typing as npt

from duplexer.kernels import fast, reference
from duplexer.kernels.errors import (
    Fault,
    MarkerError,
    TokenStreamError,
    aqaa_fault_error,
    interleave_fault_error,
)
from duplexer.kernels.tokens import (
    GROUP_SIZE,
    NO_KIND,
    SEMANTIC_ID_OFFSET,
    AqaaConfig,
    is_audio_id,
)

Backend = Literal["numba", "numpy"]
IntArray = npt.NDArray[np.int64]
IntLike = npt.ArrayLike
_EMPTY: IntArray = np.empty(0, dtype=np.int64)
_DEFAULT_AQAA = AqaaConfig()


def backend_module(backend: Backend) -> ModuleType:
    """The kernel module for a backend name; both expose the same functions."""
    if backend == "numba":
        return fast
    if backend == "numpy":
        return reference
    raise ValueError(f"unknown backend {backend!r}; use 'numba' or 'numpy'")


def as_ids(values: IntLike, name: str = "ids") -> IntArray:
    """A contiguous 1-D int64 copy-or-view of integer input; rejects floats and other shapes."""
    array = np.asarray(values)
    if array.size == 0:
        return _EMPTY
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


def as_rows(values: IntLike, name: str) -> IntArray:
    """A contiguous 2-D int64 array of integer input (sessions x padded length)."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (sessions, padded length), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def as_lengths(values: IntLike, rows: IntArray, name: str) -> IntArray:
    """Per-session valid lengths, checked against the padded width of `rows`."""
    lengths = np.ascontiguousarray(np.asarray(values), dtype=np.int64)
    if lengths.shape != (rows.shape[0],):
        raise ValueError(f"{name} must have one entry per session ({rows.shape[0]})")
    if lengths.size and (lengths.min() < 0 or lengths.max() > rows.shape[1]):
        raise ValueError(f"{name} must lie in 0..{rows.shape[1]}")
    return lengths


def _id_kind(token_id: int) -> int:
    """0 for linguistic, 1 for semantic (used to name the kind in error messages)."""
    return 1 if token_id >= SEMANTIC_ID_OFFSET else 0


def _aqaa_kind(token_id: int) -> int:
    """0 for text, 1 for audio (used to name the kind in error messages)."""
    return 1 if is_audio_id(token_id) else 0


# --- 2:3 interleave --------------------------------------------------------------------


def interleave(ling_codes: IntLike, sem_codes: IntLike, *, backend: Backend = "numba") -> IntArray:
    """Linguistic + semantic codes -> LLM ids, 2:3 groups, the tail by the module's flush rule."""
    ling, sem = as_ids(ling_codes, "ling_codes"), as_ids(sem_codes, "sem_codes")
    ids, _, _, fault, index = backend_module(backend).interleave(ling, sem, True)
    if fault != Fault.NONE:
        source = ling if fault == Fault.LINGUISTIC_CODE_RANGE else sem
        raise interleave_fault_error(Fault(fault), index, int(source[index]))
    return ids  # type: ignore[no-any-return]


def deinterleave(ids: IntLike, *, final: bool = True, backend: Backend = "numba") -> tuple[IntArray, IntArray]:
    """LLM ids -> (linguistic codes, semantic codes); `final` accepts the flushed tail form."""
    array = as_ids(ids)
    ling, sem, fault, index = backend_module(backend).deinterleave(array, 0, final)
    if fault != Fault.NONE:
        value = int(array[index])
        raise interleave_fault_error(Fault(fault), index, value, _id_kind(value))
    return ling, sem


class StreamingInterleaver:
    """Interleaves codec chunks as they arrive: emits complete 2:3 groups, carries the rest.

    `flush()` ends the stream and emits the carried tail by the module's flush rule.
    """

    def __init__(self, backend: Backend = "numba") -> None:
        self._kernels = backend_module(backend)
        self._ling: IntArray = _EMPTY
        self._sem: IntArray = _EMPTY
        self._ling_done = 0  # codes emitted so far, to report stream-wide indices
        self._sem_done = 0
        self._closed = False

    @property
    def pending(self) -> tuple[int, int]:
        """(linguistic, semantic) codes carried to the next push."""
        return self._ling.shape[0], self._sem.shape[0]

    def push(self, ling_codes: IntLike = (), sem_codes: IntLike = ()) -> IntArray:
        """Add codes of either stream; returns the ids of all groups completed so far."""
        return self._run(ling_codes, sem_codes, flush=False)

    def flush(self) -> IntArray:
        """End the stream: returns the carried tail by the flush rule; later pushes fail.

        The tail is up to 2 linguistic ids, every remaining semantic id, then the remaining
        linguistic ids; nothing is padded. `StreamingDeinterleaver.push(..., final=True)` takes it.
        """
        return self._run((), (), flush=True)

    def _run(self, ling_codes: IntLike, sem_codes: IntLike, flush: bool) -> IntArray:
        """Interleave carry + new codes; state changes only when the kernel accepts them."""
        if self._closed:
            raise RuntimeError("StreamingInterleaver was flushed; create a new one")
        new_ling, new_sem = as_ids(ling_codes, "ling_codes"), as_ids(sem_codes, "sem_codes")
        ling = np.concatenate((self._ling, new_ling)) if new_ling.size else self._ling
        sem = np.concatenate((self._sem, new_sem)) if new_sem.size else self._sem
        ids, used_l, used_s, fault, index = self._kernels.interleave(ling, sem, flush)
        if fault != Fault.NONE:
            is_ling = fault == Fault.LINGUISTIC_CODE_RANGE
            value = int((ling if is_ling else sem)[index])
            offset = self._ling_done if is_ling else self._sem_done
            raise interleave_fault_error(Fault(fault), offset + index, value)
        self._ling, self._sem = ling[used_l:], sem[used_s:]
        self._ling_done += used_l
        self._sem_done += used_s
        self._closed = flush
        return ids  # type: ignore[no-any-return]


class StreamingDeinterleaver:
    """Splits a streamed LLM id sequence back into the two codebooks, validating as it goes.

    Ordinary pushes must follow the 2:3 group order strictly (a chunk may end mid-group).
    The last push may pass ``final=True`` to also accept the flushed tail form.
    Errors name the stream-wide position; a failed push changes no state.
    """

    def __init__(self, backend: Backend = "numba") -> None:
        self._kernels = backend_module(backend)
        self._phase = 0
        self._position = 0
        self._closed = False

    @property
    def position(self) -> int:
        """Ids accepted so far."""
        return self._position

    def push(self, ids: IntLike, *, final: bool = False) -> tuple[IntArray, IntArray]:
        """Validate ids; returns (linguistic codes, semantic codes) they carry, at once."""
        if self._closed:
            raise RuntimeError("StreamingDeinterleaver got its final push; create a new one")
        array = as_ids(ids)
        ling, sem, fault, index = self._kernels.deinterleave(array, self._phase, final)
        if fault != Fault.NONE:
            value = int(array[index])
            raise interleave_fault_error(Fault(fault), self._position + index, value, _id_kind(value))
        self._phase = (self._phase + array.shape[0]) % GROUP_SIZE
        self._position += array.shape[0]
        self._closed = final
        return ling, sem


# --- AQAA text/audio mux -----------------------------------------------------------------


def aqaa_mux(
    text_ids: IntLike,
    audio_ids: IntLike,
    *,
    config: AqaaConfig = _DEFAULT_AQAA,
    with_markers: bool = True,
    backend: Backend = "numba",
) -> IntArray:
    """Text + audio ids -> one AQAA segment (10 text, 15 audio, ...); the longer stream fills the end."""
    text, audio = as_ids(text_ids, "text_ids"), as_ids(audio_ids, "audio_ids")
    ids, fault, index = backend_module(backend).aqaa_mux(
        text,
        audio,
        config.audio_start_id,
        config.audio_end_id,
        config.vocab_size,
        config.text_per_cycle,
        config.audio_per_cycle,
        with_markers,
    )
    if fault != Fault.NONE:
        value = int((text if fault == Fault.NOT_TEXT_ID else audio)[index])
        raise aqaa_fault_error(Fault(fault), index, value, vocab_size=config.vocab_size)
    return ids  # type: ignore[no-any-return]


class AqaaDemuxer:
    """Splits generated AQAA ids into text and audio streams, token by token or chunk by chunk.

    Accepts the form described in this module's docstring. A failed push raises a
    `TokenStreamError` naming the stream-wide position and id, and changes no state.
    """

    def __init__(self, config: AqaaConfig = _DEFAULT_AQAA, backend: Backend = "numba") -> None:
        self.config = config
        self._kernels = backend_module(backend)
        self._in_segment = False
        self._slot = 0
        self._only = NO_KIND
        self._position = 0
        self._segments_closed = 0

    @property
    def in_segment(self) -> bool:
        """True between `<audio_start>` and `<audio_end>`."""
        return self._in_segment

    @property
    def segments_closed(self) -> int:
        """`<audio_end>` markers accepted so far (lets a caller flush its vocoder)."""
        return self._segments_closed

    @property
    def position(self) -> int:
        """Ids accepted so far."""
        return self._position

    def push(self, ids: IntLike) -> tuple[IntArray, IntArray]:
        """Consume ids; returns the (text ids, audio ids) among them, in order."""
        array = as_ids(ids)
        cfg = self.config
        text, audio, seg, slot, only, fault, index = self._kernels.aqaa_demux(
            array,
            cfg.audio_start_id,
            cfg.audio_end_id,
            cfg.vocab_size,
            cfg.text_per_cycle,
            cfg.audio_per_cycle,
            self._in_segment,
            self._slot,
            self._only,
        )
        if fault != Fault.NONE:
            value = int(array[index])
            raise aqaa_fault_error(Fault(fault), self._position + index, value, _aqaa_kind(value), cfg.vocab_size)
        self._segments_closed += int(np.count_nonzero(array == cfg.audio_end_id))
        self._in_segment, self._slot, self._only = seg, slot, only
        self._position += array.shape[0]
        return text, audio

    def close(self) -> None:
        """Declare the end of the stream; an open audio segment is a `MarkerError`."""
        if self._in_segment:
            raise aqaa_fault_error(Fault.UNTERMINATED_SEGMENT, self._position, None)


def aqaa_demux(
    ids: IntLike, *, config: AqaaConfig = _DEFAULT_AQAA, backend: Backend = "numba"
) -> tuple[IntArray, IntArray]:
    """One-shot demux of a complete AQAA output: every segment must be closed."""
    demuxer = AqaaDemuxer(config, backend)
    text, audio = demuxer.push(ids)
    demuxer.close()
    return text, audio


# --- batched forms (many sessions per call) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchFaults:
    """Per-session fault codes and in-row indices; sessions with a fault produced nothing."""

    codes: IntArray
    indices: IntArray
    values: IntArray
    domain: Literal["interleave", "deinterleave", "aqaa"]
    vocab_size: int = 0

    @property
    def any(self) -> bool:
        """True when at least one session faulted."""
        return bool(np.any(self.codes != Fault.NONE))

    def errors(self) -> dict[int, TokenStreamError]:
        """The exception of each faulty session, by session index."""
        found: dict[int, TokenStreamError] = {}
        for b in np.flatnonzero(self.codes != Fault.NONE).tolist():
            fault, index, value = Fault(int(self.codes[b])), int(self.indices[b]), int(self.values[b])
            if self.domain == "interleave":
                error = interleave_fault_error(fault, index, value)
            elif self.domain == "deinterleave":
                error = interleave_fault_error(fault, index, value, _id_kind(value))
            else:
                error = aqaa_fault_error(fault, index, value, _aqaa_kind(value), self.vocab_size)
            found[b] = type(error)(f"session {b}: {error}", error.fault, index, value)
        return found

    def raise_first(self) -> None:
        """Raise the error of the lowest-numbered faulty session, if any."""
        errors = self.errors()
        if errors:
            raise errors[min(errors)]


def _fault_values(faults: IntArray, indices: IntArray, *sources: IntArray) -> IntArray:
    """The offending value of each faulty session, read from the first source that has it."""
    values = np.zeros(faults.shape[0], dtype=np.int64)
    for b in np.flatnonzero(faults != Fault.NONE).tolist():
        source = sources[0]
        if len(sources) > 1 and faults[b] == Fault.SEMANTIC_CODE_RANGE:
            source = sources[1]
        values[b] = source[b, indices[b]]
    return values


@dataclass(frozen=True, slots=True)
class InterleavedBatch:
    """Padded LLM ids per session plus the codes each session used (the rest is its carry)."""

    ids: IntArray
    lengths: IntArray
    ling_used: IntArray
    sem_used: IntArray
    faults: BatchFaults


def interleave_batch(
    ling_codes: IntLike,
    ling_lengths: IntLike,
    sem_codes: IntLike,
    sem_lengths: IntLike,
    *,
    flush: bool = True,
    backend: Backend = "numba",
    parallel: bool | None = None,
) -> InterleavedBatch:
    """Interleave many sessions' padded code rows at once; `flush=False` emits only whole groups.

    `parallel` (numba only): True forces the prange kernel, False the serial one, None picks
    by batch size (`fast.PARALLEL_MIN_TOKENS`).
    """
    ling, sem = as_rows(ling_codes, "ling_codes"), as_rows(sem_codes, "sem_codes")
    if ling.shape[0] != sem.shape[0]:
        raise ValueError("ling_codes and sem_codes need the same number of sessions")
    ling_len = as_lengths(ling_lengths, ling, "ling_lengths")
    sem_len = as_lengths(sem_lengths, sem, "sem_lengths")
    ids, lengths, used_l, used_s, faults, index = backend_module(backend).interleave_batch(
        ling, ling_len, sem, sem_len, flush, parallel
    )
    values = _fault_values(faults, index, ling, sem)
    return InterleavedBatch(ids, lengths, used_l, used_s, BatchFaults(faults, index, values, "interleave"))


@dataclass(frozen=True, slots=True)
class DeinterleavedBatch:
    """Padded linguistic and semantic codes per session."""

    ling_codes: IntArray
    ling_lengths: IntArray
    sem_codes: IntArray
    sem_lengths: IntArray
    faults: BatchFaults


def deinterleave_batch(
    ids: IntLike,
    lengths: IntLike,
    *,
    phases: IntLike | None = None,
    final: bool = True,
    backend: Backend = "numba",
    parallel: bool | None = None,
) -> DeinterleavedBatch:
    """De-interleave many sessions' padded id rows at once; `phases` are their group slots.

    `parallel` as in `interleave_batch`.
    """
    rows = as_rows(ids, "ids")
    id_len = as_lengths(lengths, rows, "lengths")
    phase = (
        np.zeros(rows.shape[0], np.int64)
        if phases is None
        else np.ascontiguousarray(np.asarray(phases), dtype=np.int64) % GROUP_SIZE
    )
    ling, ling_len, sem, sem_len, faults, index = backend_module(backend).deinterleave_batch(
        rows, id_len, phase, final, parallel
    )
    values = _fault_values(faults, index, rows)
    return DeinterleavedBatch(ling, ling_len, sem, sem_len, BatchFaults(faults, index, values, "deinterleave"))


@dataclass(frozen=True, slots=True)
class DemuxedBatch:
    """Padded text and audio ids per session for one `BatchAqaaDemuxer.push`."""

    text_ids: IntArray
    text_lengths: IntArray
    audio_ids: IntArray
    audio_lengths: IntArray
    faults: BatchFaults


class BatchAqaaDemuxer:
    """AQAA demux state for many sessions, advanced together by one kernel call per push.

    A faulty session produces nothing and keeps its state; the others proceed. Fault indices
    are positions in that session's whole stream.
    """

    def __init__(self, sessions: int, config: AqaaConfig = _DEFAULT_AQAA, backend: Backend = "numba") -> None:
        self.config = config
        self._kernels = backend_module(backend)
        self._in_segment = np.zeros(sessions, dtype=np.bool_)
        self._slot = np.zeros(sessions, dtype=np.int64)
        self._only = np.full(sessions, NO_KIND, dtype=np.int64)
        self._position = np.zeros(sessions, dtype=np.int64)

    @property
    def sessions(self) -> int:
        """Number of sessions served."""
        return int(self._slot.shape[0])

    @property
    def in_segment(self) -> npt.NDArray[np.bool_]:
        """Per session: True between `<audio_start>` and `<audio_end>` (a copy)."""
        return self._in_segment.copy()

    def push(self, ids: IntLike, lengths: IntLike, *, parallel: bool | None = None) -> DemuxedBatch:
        """Consume each session's first `lengths[b]` ids of row b; `parallel` as in `interleave_batch`."""
        rows = as_rows(ids, "ids")
        if rows.shape[0] != self.sessions:
            raise ValueError(f"ids must have one row per session ({self.sessions})")
        id_len = as_lengths(lengths, rows, "lengths")
        cfg = self.config
        text, text_len, audio, audio_len, faults, index = self._kernels.aqaa_demux_batch(
            rows,
            id_len,
            cfg.audio_start_id,
            cfg.audio_end_id,
            cfg.vocab_size,
            cfg.text_per_cycle,
            cfg.audio_per_cycle,
            self._in_segment,
            self._slot,
            self._only,
            parallel,
        )
        values = _fault_values(faults, index, rows)
        ok = faults == Fault.NONE
        stream_index = np.where(ok, index, index + self._position)
        self._position += np.where(ok, id_len, 0)
        return DemuxedBatch(
            text,
            text_len,
            audio,
            audio_len,
            BatchFaults(faults, stream_index, values, "aqaa", cfg.vocab_size),
        )

    def close(self) -> None:
        """Declare every stream ended; an open segment in any session is a `MarkerError`."""
        open_sessions = np.flatnonzero(self._in_segment).tolist()
        if open_sessions:
            b = open_sessions[0]
            error = aqaa_fault_error(Fault.UNTERMINATED_SEGMENT, int(self._position[b]), None)
            raise MarkerError(f"session {b}: {error}", error.fault, error.position, None)


def split_rows(rows: IntArray, lengths: IntArray) -> Sequence[IntArray]:
    """The valid prefix of each padded row, as views."""
    return [rows[b, : lengths[b]] for b in range(rows.shape[0])]
