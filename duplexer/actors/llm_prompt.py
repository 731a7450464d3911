"""Chat prompts as one string, for endpoints that take raw text (SGLang ``/generate``, ``/v1/completions``).

Each format renders a conversation as a concatenation of per-message turns followed by the
assistant's opener, so the prompt of ``(*history, user)`` always starts with the rendering of
``history``: speculative calls of one turn, which share the history and differ only in the
still-changing user text, share every byte up to that text (:func:`history_prefix`). That is
what a server's prefix cache (SGLang's radix cache, llama.cpp's prefix match) needs to hit.

Formats:

- ``chatml``: ``<|im_start|>{role}\\n{text}<|im_end|>\\n`` per message, then
  ``<|im_start|>assistant\\n`` (SmolLM2, Qwen and many others).
- ``step-audio``: Step-Audio-Chat's framing, as in :mod:`duplexer.kernels.stepaudio_prompt`,
  with the current user turn as text (the ASR transcript) instead of audio tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final, Literal, get_args

from duplexer.actors.engines import Message
from duplexer.kernels.stepaudio_prompt import BOT, EOT, ROLE_NAMES

PromptFormat = Literal["chatml", "step-audio"]
PROMPT_FORMATS: Final[tuple[str, ...]] = get_args(PromptFormat)

CHATML_OPEN: Final = "<|im_start|>"
CHATML_CLOSE: Final = "<|im_end|>"
_CHATML_RESERVED = re.compile(re.escape(CHATML_OPEN) + "|" + re.escape(CHATML_CLOSE))
_STEP_AUDIO_RESERVED = re.compile(re.escape(BOT) + "|" + re.escape(EOT) + r"|<audio_\d+>")
"""The markers Step-Audio reads as framing or audio (the set stepaudio_prompt rejects)."""

STOP_STRINGS: Final[dict[str, tuple[str, ...]]] = {"chatml": (CHATML_CLOSE,), "step-audio": (EOT,)}
"""Where generation must stop: the end of the assistant's turn."""


def _checked(text: str, reserved: re.Pattern[str], index: int, role: str) -> str:
    found = reserved.search(text)
    if found:
        raise ValueError(f"message {index} ({role}) contains {found.group()!r}, which the prompt reads as framing")
    return text


def chatml_turn(index: int, role: str, text: str) -> str:
    return f"{CHATML_OPEN}{role}\n{_checked(text, _CHATML_RESERVED, index, role)}{CHATML_CLOSE}\n"


def step_audio_turn(index: int, role: str, text: str) -> str:
    name = ROLE_NAMES.get(role)
    if name is None:
        raise ValueError(f"message {index} has role {role!r}; Step-Audio takes {', '.join(sorted(ROLE_NAMES))}")
    return f"{BOT}{name}\n{_checked(text, _STEP_AUDIO_RESERVED, index, role)}{EOT}"


_TURNS: Final[dict[str, Callable[[int, str, str], str]]] = {"chatml": chatml_turn, "step-audio": step_audio_turn}
_ASSISTANT_OPENERS: Final[dict[str, str]] = {
    "chatml": f"{CHATML_OPEN}assistant\n",
    "step-audio": f"{BOT}assistant\n",
}


def check_format(prompt_format: str) -> PromptFormat:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}")
    return prompt_format  # type: ignore[return-value]


def render_prompt(prompt_format: str, messages: Sequence[Message]) -> str:
    """The prompt string: every message as a turn, then the assistant's opener. Empty system prompts are left out."""
    turn = _TURNS[check_format(prompt_format)]
    parts = [turn(i, role, text) for i, (role, text) in enumerate(messages) if role != "system" or text]
    return "".join(parts) + _ASSISTANT_OPENERS[prompt_format]


def history_prefix(prompt_format: str, messages: Sequence[Message]) -> str:
    """What every prompt with these messages but a different last message starts with.

    That is the rendering of all messages but the last, plus the last turn's opening up to its text.
    """
    if not messages:
        return ""
    *history, (role, _) = messages
    marker = "\x00"
    last_turn = _TURNS[check_format(prompt_format)](len(history), role, marker)
    head = render_prompt(prompt_format, history)[: -len(_ASSISTANT_OPENERS[prompt_format])]
    return head + last_turn[: last_turn.index(marker)]
