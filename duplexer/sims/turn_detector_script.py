"""End-of-turn detectors in the simulator: scripted probabilities, or a text detector on the scripted words.

Detectors are compared where researchers work, in simulation, through the live code: the engine sits
behind the same :class:`~duplexer.actors.turn_detector.TurnDetectorActor` a live call runs, which asks
it when a pause starts and on each final transcript, and the controller turns its answer into the
end-of-turn silence it waits for (``PolicyParams.effective_end_of_turn_ms``). Only the engine differs:

- ``scripted`` (:class:`ScriptedTurnDetector`) answers what the scenario says for the words heard so
  far: a pause's ``end_of_turn`` once the words before it are transcribed, the step's ``end_of_turn``
  once the whole turn is; anything else (a pause that has just begun, words the script gives no
  probability for) gets the detector's "no opinion", p = 0.5, as a live text detector without words does;
- a text detector's name (``smollm2``) runs that model on the transcripts the scripted ASR gives.
"""

from __future__ import annotations

import atexit
import functools
import random
from collections.abc import Mapping, Sequence
from typing import Protocol

from duplexer.actors.engines import Message, TurnDetectorEngine
from duplexer.actors.scripted import jittered
from duplexer.actors.turn_detector import NEUTRAL_PROBABILITY, normalize_transcript
from duplexer.runtime.clock import Clock
from duplexer.sims.scenario import SCRIPTED_DETECTOR, Say, Scenario, ScenarioError, detector_of


def end_of_turn_script(
    step: Say, segments: Sequence[tuple[float, float]], words: Sequence[tuple[float, str]]
) -> dict[str, float]:
    """The step's scripted probabilities, keyed by the transcript (normalized) they answer: the words
    before a pause, the words through a segment, or the whole turn. ``segments`` and ``words`` are the
    step's speech and word onsets as the simulated user speaks them (a word whose onset lies outside
    every segment is never heard, so never transcribed)."""

    def heard(through: int) -> str:
        spans = segments[: through + 1]
        return normalize_transcript(" ".join(w for t, w in words if any(s <= t < e for s, e in spans)))

    said = step.say.split()
    script = {
        normalize_transcript(" ".join(said[: pause.after_word])): pause.end_of_turn
        for pause in step.pauses
        if pause.end_of_turn is not None
    }
    for index, segment in enumerate(step.segments or ()):
        if segment.end_of_turn is not None:
            script[heard(index)] = segment.end_of_turn
    if step.end_of_turn is not None:
        script[heard(len(segments) - 1)] = step.end_of_turn
    return script


class ScriptedTurnDetector:
    """A :class:`~duplexer.actors.engines.TurnDetectorEngine` that answers the scenario's probabilities.

    ``script`` is shared with the simulated user, who adds each turn's probabilities as the turn
    begins (a later turn with the same words answers for itself)."""

    def __init__(
        self, clock: Clock, rng: random.Random, latency_ms: float, jitter: float, script: Mapping[str, float]
    ) -> None:
        self.clock, self.rng = clock, rng
        self.latency_ms, self.jitter = latency_ms, jitter
        self.script = script
        self.asked: list[tuple[str, float]] = []
        """(transcript, probability answered), in order: what the detector was asked and said."""

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        await self.clock.sleep_ms(jittered(self.rng, self.latency_ms, self.jitter))
        probability = self.script.get(normalize_transcript(transcript), NEUTRAL_PROBABILITY)
        self.asked.append((transcript, probability))
        return probability


class TimedTextDetector:
    """A live text detector on the virtual clock: it answers at once (its computation takes no
    simulated time) and the scenario's ``engines.turn_detector.latency_ms`` is charged instead, so a
    run's timings depend on the seed and the script, never on how loaded the machine was."""

    def __init__(self, detector: TextProbability, clock: Clock, rng: random.Random, latency_ms: float, jitter: float):
        self.detector, self.clock, self.rng = detector, clock, rng
        self.latency_ms, self.jitter = latency_ms, jitter

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        probability = self.detector.probability_blocking(transcript, tuple(context))
        await self.clock.sleep_ms(jittered(self.rng, self.latency_ms, self.jitter))
        return probability


class TextProbability(Protocol):
    """A text detector's blocking call (``LlamaTurnDetector.probability_blocking``)."""

    def probability_blocking(self, transcript: str, context: Sequence[Message] = ()) -> float: ...


@functools.cache
def text_detector(name: str) -> TextProbability:
    """The live text detector of that name, loaded once per process (a real model takes seconds)."""
    if name == "smollm2":
        try:
            from duplexer.actors.models.llama_turn_detector import LlamaTurnDetector

            detector = LlamaTurnDetector()
            atexit.register(detector.close)  # freed while llama.cpp is still loaded, not at teardown
            return detector
        except (ImportError, RuntimeError, OSError, ValueError) as exc:
            raise ScenarioError(f"turn_detector: {name} cannot be loaded here: {exc}") from None
    raise ScenarioError(f"turn_detector: unknown text detector {name!r}")


def load_text_detector(scenario: Scenario, source: str) -> None:
    """Load the text detector the scenario names, if any, now: one that cannot load here is a
    ScenarioError naming the file (``source``), not a failure in the middle of the runs."""
    name = detector_of(scenario)
    if name is not None and name != SCRIPTED_DETECTOR:
        try:
            text_detector(name)
        except ScenarioError as exc:
            raise ScenarioError(f"{source}: {exc}") from None


def sim_turn_detector(
    scenario: Scenario, clock: Clock, rng: random.Random, script: Mapping[str, float]
) -> TurnDetectorEngine | None:
    """The scenario's detector for one run, or None when silence alone ends its turns."""
    name = detector_of(scenario)
    if name is None:
        return None
    latency_ms, jitter = scenario.engines.turn_detector.latency_ms, scenario.engines.jitter
    if name == SCRIPTED_DETECTOR:
        return ScriptedTurnDetector(clock, rng, latency_ms, jitter, script)
    return TimedTextDetector(text_detector(name), clock, rng, latency_ms, jitter)
