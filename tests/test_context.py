"""The context manager keeps text history; interrupted replies keep only the played words."""

from __future__ import annotations

from duplexer.actors.context import ContextManager, _Spoken


def test_speculative_prompts_share_a_byte_identical_history_prefix() -> None:
    cm = ContextManager(system_prompt="Be brief.")
    cm.add("user", "hello")
    cm.add("assistant", "hi there")
    first = cm.prompt("what is the")
    second = cm.prompt("what is the time")
    assert first[:-1] == second[:-1]
    assert repr(first[:-1]).encode() == repr(second[:-1]).encode()
    assert first[-1] == ("user", "what is the") and second[-1] == ("user", "what is the time")


def test_played_text_keeps_only_fully_played_words() -> None:
    spoken = _Spoken()
    spoken.add("The capital of France", 1000.0)  # 4 words, 250 ms each
    spoken.add("", 200.0)  # continuation audio of the same clause
    spoken.add("is Paris.", 600.0)
    assert spoken.text() == "The capital of France is Paris."
    assert spoken.played_text(0.0) == ""
    assert spoken.played_text(600.0) == "The capital"
    assert spoken.played_text(1200.0) == "The capital of France"
    assert spoken.played_text(1500.0) == "The capital of France is"
    assert spoken.played_text(10_000.0) == "The capital of France is Paris."


def test_history_is_bounded() -> None:
    cm = ContextManager(max_messages=4)
    for i in range(10):
        cm.add("user", str(i))
    assert [text for _, text in cm.history] == ["6", "7", "8", "9"]
