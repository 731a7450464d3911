"""``--tts example-tone``: a TTS engine that speaks every reply as a soft two-note tone.

It shows what a TTS engine owes duplexer (duplexer.actors.engines.TtsEngine): a ``sample_rate_hz``,
the ``renderable_instructions`` it honours, and ``synthesize``, an async iterator of PCM16 mono
chunks that stops its work when the caller closes it (barge-in). Time comes from the session's
clock, so the engine runs as well on the simulator's virtual clock as on the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence

import numpy as np

from duplexer.actors.plugins import EnginePlugin
from duplexer.runtime.clock import Clock

SAMPLE_RATE_HZ = 24_000
"""Not a rate any built-in voice uses, so a listener (or a test) can tell this engine's audio apart."""
MS_PER_CHAR = 60.0
"""How long a reply lasts per character of its text, about a brisk speaker's."""
CHUNK_MS = 200.0
FIRST_CHUNK_MS = 80.0
"""How long the first chunk takes to come out, as a fast real TTS's would."""
NOTES_HZ = (440.0, 554.37)
AMPLITUDE = 0.12


class ToneTts:
    """Speaks ``text`` as tone: two notes alternating per clause, as long as the words would take."""

    sample_rate_hz = SAMPLE_RATE_HZ
    renderable_instructions = frozenset({"slow", "fast"})

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        pace = 1.25 if "slow" in instructions else 0.8 if "fast" in instructions else 1.0
        remaining_ms = len(text) * MS_PER_CHAR * pace
        note = NOTES_HZ[len(text) % len(NOTES_HZ)]
        await self.clock.sleep_ms(FIRST_CHUNK_MS)
        phase = 0.0
        while remaining_ms > 0:
            piece_ms = min(CHUNK_MS, remaining_ms)
            n = int(self.sample_rate_hz * piece_ms / 1000)
            step = 2.0 * math.pi * note / self.sample_rate_hz
            tone = AMPLITUDE * np.sin(phase + step * np.arange(n))
            phase = (phase + step * n) % (2.0 * math.pi)
            remaining_ms -= piece_ms
            yield (tone * 32767.0).astype("<i2").tobytes()
            await self.clock.sleep_ms(piece_ms * 0.1)  # render at a tenth of real time, as a fast engine does


TONE_TTS = EnginePlugin("tts", ToneTts, "a soft two-note tone at 24 kHz, as long as the words would take")
"""What the ``tts.example-tone`` entry point names: the kind and how to build one session's engine."""
