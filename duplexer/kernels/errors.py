"""Fault codes shared by the NumPy and numba kernels, and the exceptions built from them.

Kernels never raise: they return a `Fault` code and the index of the offending token, so
both implementations can be compared exactly and the message is written in one place.
"""

from __future__ import annotations

from enum import IntEnum

from duplexer.kernels.tokens import (
    AUDIO_ID_END,
    LINGUISTIC_CODEBOOK_SIZE,
    LINGUISTIC_ID_OFFSET,
    SEMANTIC_CODEBOOK_SIZE,
)


class Fault(IntEnum):
    """Why a kernel stopped; NONE means the whole input was accepted."""

    NONE = 0
    LINGUISTIC_CODE_RANGE = 1
    SEMANTIC_CODE_RANGE = 2
    ID_RANGE = 3
    ORDER = 4
    AFTER_STREAM_END = 5
    NESTED_AUDIO_START = 6
    STRAY_AUDIO_END = 7
    AUDIO_OUTSIDE_SEGMENT = 8
    UNTERMINATED_SEGMENT = 9
    NOT_TEXT_ID = 10
    NOT_AUDIO_ID = 11


class TokenStreamError(ValueError):
    """A token or code stream broke the Step-Audio format; names the position and the id."""

    def __init__(self, message: str, fault: Fault, position: int, token_id: int | None) -> None:
        super().__init__(message)
        self.fault = fault
        self.position = position
        self.token_id = token_id


class TokenRangeError(TokenStreamError):
    """An id or codec code outside its valid range."""


class TokenOrderError(TokenStreamError):
    """A valid id in a slot where the other stream is due (misordered interleave)."""


class MarkerError(TokenStreamError):
    """An `<audio_start>`/`<audio_end>` marker, or audio, in the wrong place."""


_INTERLEAVE_KINDS = ("linguistic", "semantic")
_AQAA_KINDS = ("text", "audio")


def interleave_fault_error(fault: Fault, position: int, value: int, kind: int = -1) -> TokenStreamError:
    """Exception for a fault of the 2:3 interleave or de-interleave; `kind` is the token's kind."""
    if fault == Fault.LINGUISTIC_CODE_RANGE:
        return TokenRangeError(
            f"linguistic code {value} at index {position} is outside 0..{LINGUISTIC_CODEBOOK_SIZE - 1}",
            fault,
            position,
            value,
        )
    if fault == Fault.SEMANTIC_CODE_RANGE:
        return TokenRangeError(
            f"semantic code {value} at index {position} is outside 0..{SEMANTIC_CODEBOOK_SIZE - 1}",
            fault,
            position,
            value,
        )
    if fault == Fault.ID_RANGE:
        return TokenRangeError(
            f"position {position}: id {value} is not an audio id (expected {LINGUISTIC_ID_OFFSET}..{AUDIO_ID_END - 1})",
            fault,
            position,
            value,
        )
    name, other = _INTERLEAVE_KINDS[kind], _INTERLEAVE_KINDS[1 - kind]
    if fault == Fault.ORDER:
        return TokenOrderError(
            f"position {position}: {name} id {value} where a {other} id is due "
            "(each group is 2 linguistic then 3 semantic ids)",
            fault,
            position,
            value,
        )
    if fault == Fault.AFTER_STREAM_END:
        return TokenOrderError(
            f"position {position}: {name} id {value} after the {name} stream ended in the "
            f"flushed tail (only {other} ids may follow)",
            fault,
            position,
            value,
        )
    raise AssertionError(f"not an interleave fault: {fault!r}")


def aqaa_fault_error(
    fault: Fault, position: int, value: int | None, kind: int = -1, vocab_size: int = 0
) -> TokenStreamError:
    """Exception for a fault of the AQAA text/audio demux; `kind` is the token's kind."""
    if fault == Fault.ID_RANGE:
        return TokenRangeError(
            f"position {position}: id {value} is outside the vocabulary 0..{vocab_size - 1}",
            fault,
            position,
            value,
        )
    if fault == Fault.NOT_TEXT_ID:
        return TokenRangeError(
            f"text_ids[{position}] = {value} is not a text id (audio ids, markers and ids "
            f"outside 0..{vocab_size - 1} are not text)",
            fault,
            position,
            value,
        )
    if fault == Fault.NOT_AUDIO_ID:
        return TokenRangeError(
            f"audio_ids[{position}] = {value} is not an audio id (expected {LINGUISTIC_ID_OFFSET}..{AUDIO_ID_END - 1})",
            fault,
            position,
            value,
        )
    if fault == Fault.AFTER_STREAM_END:
        name, other = _AQAA_KINDS[kind], _AQAA_KINDS[1 - kind]
        return TokenOrderError(
            f"position {position}: {name} id {value} after the {name} stream of this audio "
            f"segment ended (an {other} id filled a {name} slot earlier)",
            fault,
            position,
            value,
        )
    messages = {
        Fault.NESTED_AUDIO_START: "<audio_start> id {v} inside an open audio segment",
        Fault.STRAY_AUDIO_END: "<audio_end> id {v} outside an audio segment",
        Fault.AUDIO_OUTSIDE_SEGMENT: "audio id {v} outside an <audio_start>...<audio_end> segment",
        Fault.UNTERMINATED_SEGMENT: "stream closed inside an audio segment (no <audio_end>)",
    }
    if fault in messages:
        text = messages[fault].format(v=value)
        return MarkerError(f"position {position}: {text}", fault, position, value)
    raise AssertionError(f"not an AQAA fault: {fault!r}")
