"""Reading input that a client, a device or a file controls: one set of limits for every surface.

Every surface (HTTP bodies of ``serve``, MQTT payloads, scenario files, wav files) reads
untrusted bytes through these helpers, so a payload nested ten thousand levels deep, a number
with five thousand digits, NaN where a time is due or a name that walks out of a folder is
refused with an :class:`UntrustedInputError` that names the field, before it can reach code
that would raise ``RecursionError``, ``OverflowError`` or spin on a non-finite loop bound.
The limits are generous for honest input and stated in the docs of each surface.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects any JSON payload may have; honest ones use 3 or 4."""
MAX_NUMBER_DIGITS = 32
"""Longest run of digits a JSON number may have; beyond it ``float()`` overflows or loses meaning."""
MAX_SLUG_CHARS = 64
"""Longest file-name slug made from a user-given name."""

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UntrustedInputError(ValueError):
    """Untrusted input broke a stated limit; ``str()`` is one line naming the field."""


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of JSON text, counted without parsing (strings skipped).

    Used before ``json.loads`` so a deep payload is refused without recursing into it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _bounded_number(text: str) -> float | int:
    digits = sum(char.isdigit() for char in text)
    if digits > MAX_NUMBER_DIGITS:
        raise UntrustedInputError(f"a number has {digits} digits (at most {MAX_NUMBER_DIGITS})")
    if any(char in text for char in ".eE"):
        value = float(text)
        if not math.isfinite(value):
            raise UntrustedInputError(f"the number {text[:40]} is out of range")
        return value
    return int(text)


def _no_constant(text: str) -> Any:
    raise UntrustedInputError(f"{text} is not a number JSON allows")


def load_json(data: bytes | str, what: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON, refusing what is oversized, not UTF-8, too deep, or has huge or
    non-finite numbers; the error names ``what`` (e.g. ``"the offer body"``)."""
    if len(data) > max_bytes:
        raise UntrustedInputError(f"{what} is {len(data)} bytes (at most {max_bytes})")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UntrustedInputError(f"{what} is not UTF-8 text") from None
    else:
        text = data
    depth = nesting_depth(text)
    if depth > max_depth:
        raise UntrustedInputError(f"{what} is nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(
            text,
            parse_int=_bounded_number,
            parse_float=_bounded_number,
            parse_constant=_no_constant,
        )
    except UntrustedInputError as exc:
        raise UntrustedInputError(f"{what}: {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UntrustedInputError(f"{what} is not valid JSON ({exc})") from None


def finite_number(value: object, field: str, low: float, high: float) -> float:
    """``value`` as a float when it is a real number (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UntrustedInputError(f"{field} must be a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > 10**MAX_NUMBER_DIGITS:
        raise UntrustedInputError(f"{field} is out of range [{low:g}, {high:g}]")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise UntrustedInputError(f"{field} must be within [{low:g}, {high:g}], got {value!r:.40}")
    return number


def bounded_int(value: object, field: str, low: int, high: int) -> int:
    """``value`` when it is an integer (not a bool, not ``2.5``) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UntrustedInputError(f"{field} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        shown = str(value) if abs(value) < 10**20 else f"an integer of {value.bit_length()} bits"
        raise UntrustedInputError(f"{field} must be within [{low}, {high}], got {shown}")
    return value


def bounded_text(value: object, field: str, max_chars: int) -> str:
    """``value`` when it is a string of at most ``max_chars`` characters with no NUL."""
    if not isinstance(value, str):
        raise UntrustedInputError(f"{field} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise UntrustedInputError(f"{field} is {len(value)} characters (at most {max_chars})")
    if "\x00" in value:
        raise UntrustedInputError(f"{field} contains a NUL character")
    return value


def slug(name: str, fallback: str = "unnamed") -> str:
    """A file-name-safe form of a user-given name: letters, digits, ``.``, ``_`` and ``-`` only,
    no leading dot, at most :data:`MAX_SLUG_CHARS`; so a name can never leave its folder."""
    cleaned = _SLUG_UNSAFE.sub("_", name).strip("._-")[:MAX_SLUG_CHARS].strip("._-")
    return cleaned or fallback
