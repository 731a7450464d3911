"""One end-of-turn probability from two detectors: the words (text) and the prosody (audio).

Each detector alone misreads its blind spot: the text model cannot hear that "So do you play
basketball" was said with a held, rising pitch that goes on; the audio model cannot see that "Can you
recommend" has no object. A logistic regression on their two logits, fitted on recorded pauses
(``duplexer bench eot``, voices A, B and C), gives one calibrated probability for the controller's
end-of-turn rule. Both weights are kept non-negative, so the fused probability never falls when
either detector grows more sure the turn is over. The pause's length is deliberately not an input:
the controller counts silence once, by its own rule.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from duplexer.actors.engines import Message, TurnDetectorEngine
from duplexer.actors.turn_detector import NEUTRAL_PROBABILITY

_P_CLIP = 1e-4
"""Probabilities are clipped to [1e-4, 1 - 1e-4] before the logit: a saturated model output must
not outvote the other detector without bound."""


def logit(p: float) -> float:
    p = min(1.0 - _P_CLIP, max(_P_CLIP, p))
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class FusionWeights:
    """p = sigmoid(bias + text * logit(p_text) + audio * logit(p_audio)); text, audio >= 0."""

    bias: float
    text: float
    audio: float

    def probability(self, p_text: float, p_audio: float) -> float:
        z = self.bias + self.text * logit(p_text) + self.audio * logit(p_audio)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


FUSION_WEIGHTS = FusionWeights(bias=0.413, text=0.486, audio=0.328)
"""Fitted by ``duplexer bench eot`` on VAP voices A, B and C (Smart Turn at the pause's start, the text
side neutral before the pause's final and read after it); the command prints a refit beside these."""


def fit_fusion(
    p_text: Sequence[float], p_audio: Sequence[float], ended: Sequence[bool], l2: float = 0.01
) -> FusionWeights:
    """Logistic regression of "the turn has ended" on the two logits (Newton steps, a little L2).

    A weight that comes out negative is fixed at zero and the rest refitted: a detector that is
    more sure of an end must never make the fused estimate less sure.
    """
    x = np.array([[1.0, logit(t), logit(a)] for t, a in zip(p_text, p_audio, strict=True)])
    y = np.asarray(ended, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("fitting the fusion needs both ended and unfinished pauses")
    active = [0, 1, 2]
    while True:
        w = _newton(x[:, active], y, l2)
        negative = [i for i, col in enumerate(active) if col > 0 and w[i] < 0]
        if not negative:
            break
        active.pop(negative[0])
    full = np.zeros(3)
    full[active] = w
    return FusionWeights(bias=float(full[0]), text=float(full[1]), audio=float(full[2]))


def _newton(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 50) -> np.ndarray:
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[0, 0] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        grad = x.T @ (p - y) + penalty @ w
        hess = x.T @ (x * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


class FusedTurnDetector:
    """A :class:`~duplexer.actors.engines.TurnDetectorEngine` that asks a text and an audio detector
    and fuses their answers with :class:`FusionWeights`.

    As a pause lengthens the actor asks again with the same words and more audio: the text answer
    for the newest (transcript, context) is kept, so only the audio model runs again.
    """

    def __init__(
        self, text: TurnDetectorEngine, audio: TurnDetectorEngine, weights: FusionWeights = FUSION_WEIGHTS
    ) -> None:
        self.text = text
        self.audio = audio
        self.weights = weights
        self._text_key: tuple[str, tuple[Message, ...]] | None = None
        self._text_p = NEUTRAL_PROBABILITY
        self._audio_key: bytes | None = None
        self._audio_p = NEUTRAL_PROBABILITY
        self.last_parts: tuple[float, float] = (NEUTRAL_PROBABILITY, NEUTRAL_PROBABILITY)
        """(p_text, p_audio) of the latest call, for benchmarks and logs."""

    async def _text_probability(self, transcript: str, context: tuple[Message, ...]) -> float:
        if not transcript.strip():  # the pause began before its transcript: no words to read yet
            return NEUTRAL_PROBABILITY
        key = (transcript, context)
        if key != self._text_key:
            self._text_p = float(await self.text.end_of_turn_probability(transcript, context))
            self._text_key = key
        return self._text_p

    async def _audio_probability(self, transcript: str, context: Sequence[Message], audio: bytes) -> float:
        if audio != self._audio_key:
            self._audio_p = float(await self.audio.end_of_turn_probability(transcript, context, audio))
            self._audio_key = audio
        return self._audio_p

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        p_text, p_audio = await asyncio.gather(
            self._text_probability(transcript, tuple(context)),
            self._audio_probability(transcript, context, audio),
        )
        self.last_parts = (float(p_text), float(p_audio))
        return self.weights.probability(*self.last_parts)

    def close(self) -> None:
        for engine in (self.text, self.audio):
            close = getattr(engine, "close", None)
            if close is not None:
                close()
