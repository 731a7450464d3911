"""Step-Audio's chat prompt: text history plus the current user turn as audio tokens.

Exact format (no separators between turns, no trailing newline)::

    <|BOT|>system\\n{system prompt}<|EOT|>            omitted when the system prompt is empty
    <|BOT|>{role}\\n{text}<|EOT|>                     one per history message, in order
    <|BOT|>human\\n<audio_N><audio_N>...<|EOT|>       the current user turn
    <|BOT|>assistant\\n                               the model continues from here

Roles: ``user`` (or ``human``) is written ``human``; ``assistant`` and ``system`` as they are.
Each ``<audio_N>`` is one audio id with N = id - 65536 (linguistic N = code, semantic
N = 1024 + code), so the LLM's tokenizer maps it back to that id. The current turn's ids
must be whole 2:3 groups in order, as Step-Audio's own tokenizer writes them and as
``AudioTokens`` events carry them. History is text, about 14 times more compact than audio.
Text that contains ``<|BOT|>``, ``<|EOT|>`` or an ``<audio_N>`` tag is rejected, since the
LLM would read it as framing or audio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from duplexer.kernels.api import deinterleave
from duplexer.kernels.errors import TokenStreamError
from duplexer.kernels.tokens import AUDIO_ID_OFFSET, GROUP_SIZE

BOT: Final = "<|BOT|>"
"""Opens a turn; the role name and a newline follow."""
EOT: Final = "<|EOT|>"
"""Closes a turn."""
ROLE_NAMES: Final = {"system": "system", "user": "human", "human": "human", "assistant": "assistant"}
"""Accepted message roles -> the role name Step-Audio's prompt uses."""
_RESERVED = re.compile(r"<\|BOT\|>|<\|EOT\|>|<audio_\d+>")


def audio_tokens_text(ids: Sequence[int]) -> str:
    """``<audio_N>`` tags for audio LLM ids (N = id - 65536); ids must be whole 2:3 groups in order."""
    if not ids:
        raise ValueError("the current user turn has no audio ids; tokenize its audio first")
    if len(ids) % GROUP_SIZE:
        raise ValueError(
            f"current-turn audio has {len(ids)} ids, not whole 2:3 groups of {GROUP_SIZE}; "
            "drop the incomplete last group"
        )
    try:
        deinterleave(list(ids), final=False, backend="numpy")
    except TokenStreamError as exc:
        raise ValueError(f"current-turn audio ids are not a Step-Audio 2:3 stream: {exc}") from exc
    return "".join(f"<audio_{token_id - AUDIO_ID_OFFSET}>" for token_id in ids)


def _turn(role: str, content: str) -> str:
    return f"{BOT}{role}\n{content}{EOT}"


def _checked_text(text: str, what: str) -> str:
    found = _RESERVED.search(text)
    if found:
        raise ValueError(f"{what} contains {found.group()!r}, which Step-Audio reads as framing or audio; remove it")
    return text


def step_audio_prompt(
    system_prompt: str | None,
    history: Sequence[tuple[str, str]],
    audio_ids: Sequence[int],
) -> str:
    """The Step-Audio prompt string for (system prompt, (role, text) history, current-turn audio ids)."""
    parts = []
    if system_prompt:
        parts.append(_turn("system", _checked_text(system_prompt, "the system prompt")))
    for index, (role, text) in enumerate(history):
        name = ROLE_NAMES.get(role)
        if name is None:
            raise ValueError(f"history message {index} has role {role!r}; use one of {', '.join(sorted(ROLE_NAMES))}")
        parts.append(_turn(name, _checked_text(text, f"history message {index} ({role})")))
    parts.append(_turn(ROLE_NAMES["user"], audio_tokens_text(audio_ids)))
    parts.append(f"{BOT}assistant\n")
    return "".join(parts)
