"""A scenario file's YAML read within stated limits: size, encoding, nesting, aliases, digits, expanded size.

PyYAML as it stands recurses once per nesting level (``RecursionError`` past ~500 levels), raises
``ValueError`` on an integer of more than 4300 digits, builds dates, sets and bytes from plain-looking
text, and lets a few lines of aliases stand for billions of values (a "billion laughs" that hangs
whatever walks the value later, e.g. ``json.dumps`` of a tool result). Each is refused here, before
a scenario model sees the data: the tokens are scanned first (iteratively) for depth and aliases,
and the loaded value is walked once with every shared value counted as often as it is used.
Errors are :class:`~duplexer.runtime.untrusted.UntrustedInputError` naming the field.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from duplexer.runtime.untrusted import MAX_NUMBER_DIGITS, UntrustedInputError

MAX_SCENARIO_BYTES = 1 << 20
"""Largest scenario file read (1 MiB); the longest shipped one is a few kB."""
MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings and lists (a tool result included); a scenario needs about 6."""
MAX_YAML_ALIASES = 100
"""Most ``*alias`` references in one file."""
MAX_YAML_VALUES = 100_000
"""Most values (scalars, lists, mappings) in the file once every alias is expanded."""

_OPENERS = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSERS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


class _OversizedInt:
    """Stands for an integer with too many digits, so the walk refuses it naming its field."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose integers are checked for length before ``int()`` sees them."""


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    digits = sum(char.isdigit() for char in str(node.value))
    if digits > MAX_NUMBER_DIGITS:
        return _OversizedInt(digits)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
# YAML 1.1 reads 1e6 (no dot) as text; a time written so is meant as a number, as in YAML 1.2 and JSON.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def _scan(text: str) -> None:
    """Refuse nesting deeper than MAX_YAML_DEPTH and more than MAX_YAML_ALIASES aliases, from the
    token stream (the scanner does not recurse), before the composer recurses into them."""
    depth = aliases = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _OPENERS):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = token.start_mark.line + 1
                raise UntrustedInputError(f"nested more than {MAX_YAML_DEPTH} levels deep at line {line}")
        elif isinstance(token, _CLOSERS):
            depth -= 1
        elif isinstance(token, yaml.AliasToken):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                line = token.start_mark.line + 1
                raise UntrustedInputError(f"more than {MAX_YAML_ALIASES} YAML aliases (line {line})")


def read_yaml(data: bytes) -> Any:
    """The value of a scenario file's bytes; UntrustedInputError (one line, the field named where
    there is one) for what is oversized, not UTF-8, not YAML, too deep, a bomb, or not plain data."""
    if len(data) > MAX_SCENARIO_BYTES:
        raise UntrustedInputError(f"the file is {len(data)} bytes (at most {MAX_SCENARIO_BYTES})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedInputError(f"not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise UntrustedInputError("not text (it holds a NUL byte)")
    try:
        _scan(text)
        value = yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        raise UntrustedInputError(f"not valid YAML{_where(exc)}") from None
    except RecursionError:  # the scan bounds the depth; this is a second line of defence
        raise UntrustedInputError(f"nested more than {MAX_YAML_DEPTH} levels deep") from None
    check_plain(value)
    return value


def _child(field: str, key: object) -> str:
    if isinstance(key, int):
        return f"{field}[{key}]" if field else f"[{key}]"
    return f"{field}.{key}" if field else str(key)


def check_plain(value: Any) -> int:
    """Refuse anything but JSON-like data (mappings with text keys, lists, text, finite-length
    integers, floats, booleans, null), and values that expand, aliases and all, to more than
    MAX_YAML_VALUES; returns the expanded count. Shared values are walked once."""
    counts: dict[int, int] = {}
    walking: set[int] = set()

    def walk(node: Any, field: str) -> int:
        if isinstance(node, _OversizedInt):
            raise UntrustedInputError(
                f"{field or '(top level)'}: a number has {node.digits} digits (at most {MAX_NUMBER_DIGITS})"
            )
        if node is None or isinstance(node, str | bool | int | float):
            return 1
        key = id(node)
        if key in counts:
            return counts[key]
        if key in walking:
            raise UntrustedInputError(f"{field or '(top level)'}: a YAML alias refers to a value that holds it")
        walking.add(key)
        total = 1
        if isinstance(node, dict):
            for name, item in node.items():
                if not isinstance(name, str):
                    raise UntrustedInputError(
                        f"{field or '(top level)'}: the key {str(name)[:40]!r} is not text (quote it)"
                    )
                total += walk(item, _child(field, name[:80]))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                total += walk(item, _child(field, index))
        else:
            kind = type(node).__name__
            raise UntrustedInputError(
                f"{field or '(top level)'}: a YAML {kind} is not allowed (quote it to make it text)"
            )
        walking.discard(key)
        if total > MAX_YAML_VALUES:
            raise UntrustedInputError(
                f"{field or '(top level)'}: expands to more than {MAX_YAML_VALUES} values (aliases included)"
            )
        counts[key] = total
        return total

    return walk(value, "")
