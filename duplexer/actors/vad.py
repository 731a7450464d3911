"""VAD actor: turns per-frame speech probabilities into speech start/stop events.

Hysteresis in the manner of Silero's iterator: speech starts after
``min_speech_ms`` of frames above ``threshold`` (the onset lag) and stops after
``min_silence_ms`` below ``threshold - hysteresis`` (the offset lag). Events carry
the true segment boundaries, so the controller times silences from when speech
really ended.

The onset lag is a window in which the user may already be speaking again while the
controller still counts silence. So while no speech is open, the VAD also says when
the newest frame's raw probability first reaches ``candidate_threshold`` and when
that run ends (:class:`VadOnsetCandidate`, two events per run, not one per frame):
the controller holds a commit until the candidate is confirmed or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from duplexer.actors.engines import VadEngine
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    AudioFrame,
    Event,
    VadOffsetCandidate,
    VadOnsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
)


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5
    hysteresis: float = 0.15
    min_speech_ms: float = 60.0
    min_silence_ms: float = 100.0
    offset_candidate_ms: float = 40.0
    """Silence after which speech may have ended (:class:`VadOffsetCandidate`): the ASR starts the
    final transcript then, ``min_silence_ms - offset_candidate_ms`` before the stop is certain."""
    candidate_threshold: float = 0.3
    """A frame at or above this raw probability, with no speech open, may be speech starting
    (Silero gives silence and steady noise < 0.1, and speech onsets pass 0.3 one window before 0.5)."""


class VadActor(Actor):
    name = "vad"
    subscribes = (AudioFrame,)

    def __init__(self, ctx: SessionContext, engine: VadEngine, params: VadParams | None = None) -> None:
        super().__init__(ctx)
        self.engine = engine
        self.params = params or VadParams()
        self.segment_id = 0
        self.in_speech = False
        self.run_start_ms: float | None = None  # first frame of the current above/below run
        self.last_speech_end_ms = 0.0
        self.peak_probability = 0.0
        self.candidate_since_ms: float | None = None

    async def handle(self, event: Event) -> None:
        assert isinstance(event, AudioFrame)
        p = self.params
        frame_start_ms = event.seq * event.duration_ms
        frame_end_ms = frame_start_ms + event.duration_ms
        prob = self.engine.speech_probability(event.pcm, frame_start_ms) * event.speech_gate
        if not self.in_speech and self.candidate_since_ms is None and prob >= p.candidate_threshold:
            self.candidate_since_ms = frame_start_ms
            self.emit(VadOnsetCandidate, active=True, probability=prob, since_ms=frame_start_ms)
        if not self.in_speech:
            if prob >= p.threshold:
                if self.run_start_ms is None:
                    self.run_start_ms, self.peak_probability = frame_start_ms, prob
                self.peak_probability = max(self.peak_probability, prob)
                if frame_end_ms - self.run_start_ms >= p.min_speech_ms:
                    self.in_speech = True
                    self.segment_id += 1
                    self.emit(
                        VadSpeechStart,
                        segment_id=self.segment_id,
                        probability=self.peak_probability,
                        speech_start_ms=self.run_start_ms,
                    )
                    self.run_start_ms = None
                    self._end_candidate(prob)
            else:
                self.run_start_ms = None
                if prob < p.candidate_threshold:
                    self._end_candidate(prob)
        elif prob < p.threshold - p.hysteresis:
            if self.run_start_ms is None:
                self.run_start_ms = frame_start_ms
            silence_ms = frame_end_ms - self.run_start_ms
            if silence_ms >= p.offset_candidate_ms and silence_ms - event.duration_ms < p.offset_candidate_ms:
                self.emit(VadOffsetCandidate, segment_id=self.segment_id, speech_end_ms=self.run_start_ms)
            if silence_ms >= p.min_silence_ms:
                self.in_speech = False
                self.emit(
                    VadSpeechStop,
                    segment_id=self.segment_id,
                    probability=prob,
                    speech_end_ms=self.run_start_ms,
                )
                self.run_start_ms = None
        else:
            self.run_start_ms = None

    def _end_candidate(self, prob: float) -> None:
        """The candidate run is over: confirmed as speech (after its VadSpeechStart) or dropped."""
        if self.candidate_since_ms is not None:
            self.emit(VadOnsetCandidate, active=False, probability=prob, since_ms=self.candidate_since_ms)
            self.candidate_since_ms = None
