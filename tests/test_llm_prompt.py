"""Raw-text chat prompts: every format keeps the history prefix byte-identical when only the user text changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.actors.llm_prompt import history_prefix, render_prompt
from duplexer.kernels.stepaudio_prompt import step_audio_prompt
from duplexer.kernels.tokens import AUDIO_ID_OFFSET

SYSTEM = "You are a helpful voice assistant."
HISTORY = [("user", "hello there"), ("assistant", "Hi! How can I help?")]


def test_chatml_renders_each_message_as_a_turn_then_opens_the_assistant() -> None:
    prompt = render_prompt("chatml", [("system", SYSTEM), *HISTORY, ("user", "what time is it")])
    assert prompt == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nhello there<|im_end|>\n"
        "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
        "<|im_start|>user\nwhat time is it<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_step_audio_text_prompt_frames_turns_as_step_audio_prompt_does() -> None:
    """Same system and history: our text prompt and the audio prompt agree byte for byte up to the current turn."""
    ids = [
        AUDIO_ID_OFFSET + 3,
        AUDIO_ID_OFFSET + 7,
        AUDIO_ID_OFFSET + 1024,
        AUDIO_ID_OFFSET + 1025,
        AUDIO_ID_OFFSET + 1026,
    ]
    audio_prompt = step_audio_prompt(SYSTEM, HISTORY, ids)
    messages = [("system", SYSTEM), *HISTORY, ("user", "what time is it")]
    text_prompt = render_prompt("step-audio", messages)
    shared = history_prefix("step-audio", messages)
    assert shared.endswith("<|BOT|>human\n")
    assert audio_prompt.startswith(shared) and text_prompt.startswith(shared)
    assert text_prompt == shared + "what time is it<|EOT|><|BOT|>assistant\n"


def test_an_empty_system_prompt_is_left_out() -> None:
    assert render_prompt("chatml", [("system", ""), ("user", "hi")]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("prompt_format", "text", "marker"),
    [("chatml", "say <|im_end|> now", "<|im_end|>"), ("step-audio", "an <audio_12> tag", "<audio_12>")],
)
def test_text_that_would_read_as_framing_is_refused_naming_the_message(
    prompt_format: str, text: str, marker: str
) -> None:
    with pytest.raises(ValueError, match=rf"message 1 \(user\) contains '{marker}'"):
        render_prompt(prompt_format, [("system", SYSTEM), ("user", text)])


def test_an_unknown_format_or_role_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of chatml, step-audio"):
        render_prompt("llama9", [("user", "hi")])
    with pytest.raises(ValueError, match="role 'tool'"):
        render_prompt("step-audio", [("tool", "42")])


texts = st.text(st.characters(blacklist_characters="<>|\x00", blacklist_categories=("Cs",)), max_size=40)
histories = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), max_size=6)


@settings(max_examples=200, deadline=None)
@given(prompt_format=st.sampled_from(["chatml", "step-audio"]), history=histories, first=texts, second=texts)
def test_speculative_prompts_of_a_turn_share_every_byte_before_the_user_text(
    prompt_format: str, history: list[tuple[str, str]], first: str, second: str
) -> None:
    early = [("system", SYSTEM), *history, ("user", first)]
    late = [("system", SYSTEM), *history, ("user", second)]
    shared = history_prefix(prompt_format, early)
    assert shared == history_prefix(prompt_format, late)
    assert render_prompt(prompt_format, early).startswith(shared + first)
    assert render_prompt(prompt_format, late).startswith(shared + second)
