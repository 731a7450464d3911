"""The shared limits on untrusted input: deep, huge, non-finite or path-like input is refused
with one line naming it, and honest input passes unchanged."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.runtime.untrusted import (
    MAX_JSON_DEPTH,
    MAX_SLUG_CHARS,
    UntrustedInputError,
    bounded_int,
    bounded_text,
    finite_number,
    load_json,
    nesting_depth,
    slug,
)
from tests.conftest import fuzz_settings

pytestmark = pytest.mark.fuzz


def test_deep_json_is_refused_before_parsing() -> None:
    with pytest.raises(UntrustedInputError, match="the body is nested 100000 levels"):
        load_json("[" * 100_000 + "]" * 100_000, "the body", max_bytes=1_000_000)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[[[[{{{{" * 100})
    assert nesting_depth(text) == 1
    assert load_json(text, "x", max_bytes=10_000) == {"a": "[[[[{{{{" * 100}


def test_huge_and_non_finite_numbers_are_refused() -> None:
    with pytest.raises(UntrustedInputError, match="400 digits"):
        load_json('{"v": ' + "9" * 400 + "}", "the policy", max_bytes=10_000)
    with pytest.raises(UntrustedInputError, match="out of range"):
        load_json('{"v": 1e400}', "the policy", max_bytes=10_000)
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(UntrustedInputError, match="not a number JSON allows"):
            load_json(f'{{"v": {constant}}}', "the policy", max_bytes=10_000)


def test_oversized_and_non_utf8_bodies_are_refused() -> None:
    with pytest.raises(UntrustedInputError, match="at most 10"):
        load_json(b"[1,2,3,4,5,6]", "the body", max_bytes=10)
    with pytest.raises(UntrustedInputError, match="not UTF-8"):
        load_json(b"\xff\xfe{}", "the body", max_bytes=10)
    with pytest.raises(UntrustedInputError, match="not valid JSON"):
        load_json(b"{", "the body", max_bytes=10)


def test_number_fields() -> None:
    assert finite_number(3, "x", 0, 10) == 3.0
    for bad in (True, "3", math.nan, math.inf, -1, 11, 10**5000):
        with pytest.raises(UntrustedInputError, match=r"^x "):
            finite_number(bad, "x", 0, 10)
    assert bounded_int(4, "n", 0, 10) == 4
    for bad in (2.5, True, 11, 10**5000):
        with pytest.raises(UntrustedInputError, match=r"^n "):
            bounded_int(bad, "n", 0, 10)
    with pytest.raises(UntrustedInputError) as refused:
        bounded_int(10**5000, "n", 0, 1)
    assert len(str(refused.value)) < 80


def test_text_fields() -> None:
    assert bounded_text("hi", "name", 5) == "hi"
    for bad in (3, "x" * 6, "a\x00b"):
        with pytest.raises(UntrustedInputError, match=r"^name "):
            bounded_text(bad, "name", 5)


@pytest.mark.parametrize("name", ["/etc/passwd", "../../x", "..", ".hidden", "a/b\\c", "", "\x00"])
def test_slugs_never_leave_their_folder(name: str) -> None:
    made = slug(name)
    assert "/" not in made and "\\" not in made and not made.startswith(".")
    assert made not in ("", ".", "..")


@fuzz_settings()
@given(st.text(max_size=500))
def test_any_name_gives_a_safe_slug(name: str) -> None:
    made = slug(name)
    assert 0 < len(made) <= MAX_SLUG_CHARS
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in made)
    assert not made.startswith(".")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@fuzz_settings()
@given(json_values)
def test_honest_json_round_trips(value: object) -> None:
    text = json.dumps(value)
    if nesting_depth(text) <= MAX_JSON_DEPTH:
        assert load_json(text, "x", max_bytes=1_000_000) == json.loads(text)


@fuzz_settings()
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_bytes_give_a_value_or_the_one_error(data: bytes | str) -> None:
    try:
        load_json(data, "the payload", max_bytes=200)
    except UntrustedInputError as exc:
        assert "\n" not in str(exc)
