"""Step-Audio token-format facts, each defined once; every kernel imports them from here.

The LLM sees one sequence merging two audio tokenizers: a 16.7 Hz linguistic tokenizer
(1024 codes) and a 25 Hz semantic tokenizer (4096 codes), interleaved as groups of
2 linguistic + 3 semantic tokens (one group per 120 ms). Audio LLM ids are
``AUDIO_ID_OFFSET + N`` with N = code (linguistic) or N = 1024 + code (semantic).
Step-Audio-AQAA generation interleaves 10 text and 15 audio tokens between marker tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# --- audio token vocabulary -------------------------------------------------------------
AUDIO_ID_OFFSET: Final = 65536
"""First audio id in the LLM vocabulary; text ids lie below it."""
LINGUISTIC_CODEBOOK_SIZE: Final = 1024
"""Codes of the linguistic (16.7 Hz) tokenizer: 0..1023."""
SEMANTIC_CODEBOOK_SIZE: Final = 4096
"""Codes of the semantic (25 Hz) tokenizer: 0..4095."""

LINGUISTIC_ID_OFFSET: Final = AUDIO_ID_OFFSET
"""LLM id of linguistic code 0 (ids 65536..66559)."""
SEMANTIC_ID_OFFSET: Final = AUDIO_ID_OFFSET + LINGUISTIC_CODEBOOK_SIZE
"""LLM id of semantic code 0 (ids 66560..70655)."""
AUDIO_ID_END: Final = SEMANTIC_ID_OFFSET + SEMANTIC_CODEBOOK_SIZE
"""One past the last audio id (70656)."""
AUDIO_VOCAB_SIZE: Final = LINGUISTIC_CODEBOOK_SIZE + SEMANTIC_CODEBOOK_SIZE
"""Number of audio ids (rows of the audio part of an embedding table)."""

# --- 2:3 group structure ------------------------------------------------------------------
LINGUISTIC_PER_GROUP: Final = 2
"""Linguistic tokens that open each interleave group."""
SEMANTIC_PER_GROUP: Final = 3
"""Semantic tokens that close each interleave group."""
GROUP_SIZE: Final = LINGUISTIC_PER_GROUP + SEMANTIC_PER_GROUP
"""Tokens per interleave group."""
GROUP_DURATION_MS: Final = 120
"""Audio covered by one group."""
LINGUISTIC_RATE_HZ: Final = LINGUISTIC_PER_GROUP * 1000.0 / GROUP_DURATION_MS
"""Linguistic token rate (about 16.7 Hz), derived from the group structure."""
SEMANTIC_RATE_HZ: Final = SEMANTIC_PER_GROUP * 1000.0 / GROUP_DURATION_MS
"""Semantic token rate (25 Hz), derived from the group structure."""

# --- AQAA text/audio output interleave ----------------------------------------------------
AQAA_TEXT_PER_CYCLE: Final = 10
"""Text tokens that open each AQAA output cycle."""
AQAA_AUDIO_PER_CYCLE: Final = 15
"""Audio tokens that close each AQAA output cycle (three 2:3 groups)."""

DEFAULT_AUDIO_START_ID: Final = AUDIO_ID_END
"""Default `<audio_start>` id: just past the audio ids, since real vocabularies differ."""
DEFAULT_AUDIO_END_ID: Final = AUDIO_ID_END + 1
"""Default `<audio_end>` id."""
DEFAULT_VOCAB_SIZE: Final = AUDIO_ID_END + 2
"""Default LLM vocabulary size: text ids, audio ids, then the two default markers."""

PAD_ID: Final = -1
"""Filler after each session's valid ids in padded batch outputs (never a valid id)."""

# Token kinds, shared by the split kernels and their error messages.
KIND_LINGUISTIC: Final = 0
KIND_SEMANTIC: Final = 1
KIND_TEXT: Final = 0
KIND_AUDIO: Final = 1
NO_KIND: Final = -1


def is_audio_id(token_id: int) -> bool:
    """True for any linguistic or semantic LLM id."""
    return AUDIO_ID_OFFSET <= token_id < AUDIO_ID_END


@dataclass(frozen=True, slots=True)
class AqaaConfig:
    """Marker ids and cycle shape of AQAA output; defaults follow the paper, markers are guesses.

    Text ids are every id in ``0..vocab_size-1`` that is neither an audio id nor a marker.
    """

    audio_start_id: int = DEFAULT_AUDIO_START_ID
    audio_end_id: int = DEFAULT_AUDIO_END_ID
    vocab_size: int = DEFAULT_VOCAB_SIZE
    text_per_cycle: int = AQAA_TEXT_PER_CYCLE
    audio_per_cycle: int = AQAA_AUDIO_PER_CYCLE

    def __post_init__(self) -> None:
        """Reject configurations where markers collide with audio ids or each other."""
        if self.vocab_size < AUDIO_ID_END:
            raise ValueError(f"vocab_size {self.vocab_size} must cover the audio ids (<{AUDIO_ID_END})")
        for name in ("audio_start_id", "audio_end_id"):
            marker = getattr(self, name)
            if not 0 <= marker < self.vocab_size:
                raise ValueError(f"{name} {marker} is outside the vocabulary 0..{self.vocab_size - 1}")
            if is_audio_id(marker):
                raise ValueError(f"{name} {marker} lies in the audio id range")
        if self.audio_start_id == self.audio_end_id:
            raise ValueError("audio_start_id and audio_end_id must differ")
        if self.text_per_cycle < 1 or self.audio_per_cycle < 1:
            raise ValueError("text_per_cycle and audio_per_cycle must be at least 1")

    @property
    def cycle_size(self) -> int:
        """Tokens per text+audio cycle (25 by default)."""
        return self.text_per_cycle + self.audio_per_cycle
