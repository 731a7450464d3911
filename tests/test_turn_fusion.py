"""Fusing the text and audio end-of-turn detectors: monotone, calibrated by a fit, text answers reused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.actors.engines import Message
from duplexer.actors.turn_fusion import FUSION_WEIGHTS, FusedTurnDetector, FusionWeights, fit_fusion, logit

P = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
WEIGHTS = st.builds(
    FusionWeights,
    bias=st.floats(-5, 5),
    text=st.floats(0, 5),
    audio=st.floats(0, 5),
)


@given(WEIGHTS, P, P, P)
def test_the_fused_probability_never_falls_when_the_text_detector_rises(
    w: FusionWeights, text: float, other: float, audio: float
) -> None:
    low, high = sorted((text, other))
    assert w.probability(low, audio) <= w.probability(high, audio) + 1e-12


@given(WEIGHTS, P, P, P)
def test_the_fused_probability_never_falls_when_the_audio_detector_rises(
    w: FusionWeights, audio: float, other: float, text: float
) -> None:
    low, high = sorted((audio, other))
    assert w.probability(text, low) <= w.probability(text, high) + 1e-12


@given(P, P)
def test_the_shipped_weights_give_a_probability(text: float, audio: float) -> None:
    assert 0.0 <= FUSION_WEIGHTS.probability(text, audio) <= 1.0
    assert FUSION_WEIGHTS.text >= 0 and FUSION_WEIGHTS.audio >= 0


def test_the_fit_recovers_the_weights_that_generated_the_labels() -> None:
    rng = np.random.default_rng(0)
    truth = FusionWeights(bias=-0.5, text=0.7, audio=1.5)
    pt, pa = rng.uniform(0.01, 0.99, 4000), rng.uniform(0.01, 0.99, 4000)
    ended = rng.uniform(size=4000) < np.array([truth.probability(t, a) for t, a in zip(pt, pa, strict=True)])
    fitted = fit_fusion(pt.tolist(), pa.tolist(), ended.tolist())
    assert fitted.bias == pytest.approx(truth.bias, abs=0.2)
    assert fitted.text == pytest.approx(truth.text, abs=0.2)
    assert fitted.audio == pytest.approx(truth.audio, abs=0.2)


def test_a_detector_that_points_the_wrong_way_gets_weight_zero_not_a_negative_one() -> None:
    rng = np.random.default_rng(1)
    pa = rng.uniform(0.01, 0.99, 2000)
    ended = rng.uniform(size=2000) < pa
    pt = np.where(ended, 0.2, 0.8)  # the text detector is anti-correlated with the truth
    fitted = fit_fusion(pt.tolist(), pa.tolist(), ended.tolist())
    assert fitted.text == 0.0 and fitted.audio > 0.5


def test_fitting_needs_both_outcomes() -> None:
    with pytest.raises(ValueError, match="both"):
        fit_fusion([0.5, 0.6], [0.5, 0.4], [True, True])


def test_logits_are_clipped_so_one_saturated_detector_does_not_overrule_without_bound() -> None:
    assert logit(0.0) == pytest.approx(-logit(1.0))
    assert abs(logit(1.0)) < 10


class Counting:
    def __init__(self, p: float) -> None:
        self.p = p
        self.calls: list[tuple[str, bytes]] = []

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        self.calls.append((transcript, audio))
        return self.p


def test_the_fused_engine_asks_each_detector_once_per_input_and_reads_no_words_as_undecided() -> None:
    text, audio = Counting(0.9), Counting(0.2)
    fused = FusedTurnDetector(text, audio, FusionWeights(bias=0.0, text=1.0, audio=1.0))
    pause = b"\x00\x01\x00\x00"

    async def main() -> list[float]:
        return [
            await fused.end_of_turn_probability("", (), pause),  # the pause starts before its transcript
            await fused.end_of_turn_probability("so do you", (), pause),  # the final lands in the same pause
        ]

    out = asyncio.run(main())
    assert text.calls == [("so do you", b"")]  # the text detector is not given audio
    assert audio.calls == [("", pause)]  # the pause's audio is heard once
    assert out[0] == pytest.approx(FusionWeights(0.0, 1.0, 1.0).probability(0.5, 0.2))
    assert out[1] == pytest.approx(FusionWeights(0.0, 1.0, 1.0).probability(0.9, 0.2))


def test_the_fused_engine_asks_the_text_detector_once_per_transcript_and_the_audio_one_every_time() -> None:
    text, audio = Counting(0.9), Counting(0.2)
    fused = FusedTurnDetector(text, audio, FusionWeights(bias=0.0, text=1.0, audio=1.0))

    async def main() -> list[float]:
        return [
            await fused.end_of_turn_probability("so do you", (), b"\x00\x01"),
            await fused.end_of_turn_probability("so do you", (), b"\x00\x01\x00\x00"),
            await fused.end_of_turn_probability("so do you play", (), b"\x00\x01\x00\x00\x00\x00"),
        ]

    out = asyncio.run(main())
    assert [t for t, _ in text.calls] == ["so do you", "so do you play"]
    assert len(audio.calls) == 3 and audio.calls[-1][1] == b"\x00\x01\x00\x00\x00\x00"
    assert out[0] == pytest.approx(FusionWeights(0.0, 1.0, 1.0).probability(0.9, 0.2))
    assert fused.last_parts == (0.9, 0.2)


def test_the_default_real_engines_fuse_the_text_and_audio_detectors() -> None:
    from duplexer.actors.models.loading import LoadedModels, RealEngineConfig

    config = RealEngineConfig()
    assert config.audio_turn_detector and config.turn_detector is not None
    text, audio = Counting(0.9), Counting(0.2)
    both = LoadedModels(asr=None, llm=None, tts=None, text_turn_detector=text, audio_turn_detector=audio)  # type: ignore[arg-type]
    assert isinstance(both.turn_detector, FusedTurnDetector)
    assert both.turn_detector is not both.turn_detector  # one per session: its text answer is the session's
    only_audio = LoadedModels(asr=None, llm=None, tts=None, audio_turn_detector=audio)  # type: ignore[arg-type]
    assert only_audio.turn_detector is audio
