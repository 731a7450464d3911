"""Whisper's short-window mode without the model: the loop trimming that guards its decoder."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from duplexer.actors.models.whisper_asr import MIN_REPEAT_WORDS, trim_repeated_tail

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
TEXT = st.lists(st.sampled_from(["a", "b", "c", "you", "You,", "A.", "student?"]), max_size=30).map(" ".join)


def _restyle(word: str, style: int) -> str:
    """How a looping decoder varies a word: case and trailing punctuation."""
    cased = (word, word.capitalize(), word.upper())[style % 3]
    return cased + ("", ",", "?", ".")[style // 3 % 4]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Are you a student? Are you a student? Are you a student?", "Are you a student?"),
        ("Do you live by yourself? do You Live By Yourself, DO YOU", "Do you live by yourself?"),
        ("So did you drive here? So did you", "So did you drive here?"),
        (
            "Hello. What is the capital of France? What is the capital of France?",
            "Hello. What is the capital of France?",
        ),
        ("no, no, no I do not know", "no, no, no I do not know"),
        ("Can you recommend a good book to read this weekend?", "Can you recommend a good book to read this weekend?"),
        ("", ""),
    ],
)
def test_trims_decoding_loops_and_keeps_speech(text: str, kept: str) -> None:
    assert trim_repeated_tail(text) == kept


@given(TEXT)
@example("a a b a a b a b a")  # a trimmed loop can leave another at the new end
def test_the_result_is_a_word_prefix_and_trimming_is_idempotent(text: str) -> None:
    trimmed = trim_repeated_tail(text)
    words = trimmed.split()
    assert text.split()[: len(words)] == words
    assert trim_repeated_tail(trimmed) == trimmed


@given(st.lists(WORD, unique=True, max_size=40))
def test_text_without_repeated_words_is_unchanged(words: list[str]) -> None:
    text = " ".join(words)
    assert trim_repeated_tail(text) == text


@given(
    words=st.lists(WORD, unique=True, min_size=MIN_REPEAT_WORDS + 1, max_size=24),
    data=st.data(),
)
def test_a_looped_sentence_is_kept_once(words: list[str], data: st.DataObject) -> None:
    split = data.draw(st.integers(1, len(words) - MIN_REPEAT_WORDS), label="prefix length")
    prefix, block = words[:split], words[split:]
    repeats = data.draw(st.integers(0, 3), label="complete repetitions")
    partial = data.draw(st.integers(0, len(block) - 1), label="cut-off words")
    loop = block * repeats + block[:partial]
    if len(loop) < MIN_REPEAT_WORDS:  # fewer repeated words are not a loop: repeat the block once
        loop = list(block)
    styles = data.draw(st.lists(st.integers(0, 11), min_size=len(loop), max_size=len(loop)), label="styles")
    text = " ".join(prefix + block + [_restyle(w, s) for w, s in zip(loop, styles, strict=True)])
    assert trim_repeated_tail(text) == " ".join(prefix + block)
