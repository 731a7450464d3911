"""The pauses of the VAP phrases, and what each end-of-turn detector says in them, recorded once.

Each phrase comes as a short form (a finished question) and a long form (the same words, then more,
usually after an audible pause where the short form ended). That gives three kinds of pause:

- ``short_end``: the end of a short form, a true end of turn;
- ``long_mid``: the pause in the long form where the short form ended, which must not be taken.
  The recordings run on with little or no gap there (mostly under the VAD's 100 ms stop lag), so the
  pause is modelled: the long form's audio up to those words, then silence, and the user resumes
  after each of :data:`HESITATIONS_MS` in turn (the replay counts each as one mid-turn pause);
- ``long_end``: the end of a long form, a true end of turn.

For each pause the detectors are asked as the turn-detector actor asks them live: when the VAD's
speech stop arrives (:attr:`~duplexer.actors.vad.VadParams.min_silence_ms` after the speech ended)
and :data:`~duplexer.actors.turn_detector.PAUSE_OFFSETS_MS` later, each time with the turn's audio
up to then; the text detector reads Whisper's transcript of the turn up to the stop. Outputs and the
wall time of each call go to a JSON cache, so sweeping the policy costs no model time.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from duplexer.actors.turn_detector import PAUSE_OFFSETS_MS
from duplexer.actors.vad import VadParams
from duplexer.kernels.audio import pcm16_to_float
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

VOICES = ("A", "B", "C", "E", "F")
KINDS = ("short_end", "long_mid", "long_end")
ENDS = ("short_end", "long_end")
VAD_STOP_LAG_MS = VadParams().min_silence_ms
"""The VAD's speech stop comes this long after the speech ended: the first time anyone asks."""
ASK_OFFSETS_MS = (0.0, *PAUSE_OFFSETS_MS)
"""When the actor asks, in ms after the VAD's stop."""
_FRAME_MS = 10.0
_WORD_START_SLACK_MS = 30.0
_SILENCE_DB = -45.0
"""A 10 ms frame this far below the clip's loudest frame is silence (the clips are clean TTS)."""
HESITATIONS_MS = (160.0, 250.0, 320.0, 380.0, 460.0, 550.0, 650.0, 790.0, 1020.0, 1540.0)
"""How long the modelled mid-turn pauses last before the user goes on, equally weighted: the ten
5%-95% quantiles of a log-normal with median 500 ms and 90th percentile 1.2 s (a modelling choice:
most hesitations are short, a few are long)."""
CACHE_NAME = "pauses.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class Pause:
    """One pause: where the speech before it ended, how long the silence lasts, and what kind it is."""

    name: str
    """Clip stem plus kind, e.g. ``basketball_long_male_en-US-Wavenet-A:long_mid``."""
    phrase: str
    voice: str
    kind: str
    wav: Path
    speech_end_ms: float
    pause_ms: float
    """The recording's own gap before the continuation (informational); infinite at an end of turn."""


@dataclass
class Recording:
    """What the detectors said in one pause (probabilities and wall ms per call)."""

    name: str
    phrase: str
    voice: str
    kind: str
    pause_ms: float
    transcript: str
    p_text: float
    text_ms: float
    """Whisper's final plus the text detector: when, after the VAD's stop, the text answer is in."""
    p_audio: list[float] = field(default_factory=list)
    """Per :data:`ASK_OFFSETS_MS` (the replay drops asks made after the user resumed)."""
    audio_ms: list[float] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.kind in ENDS


def _voiced_runs(samples: np.ndarray) -> list[tuple[float, float]]:
    """(start ms, end ms) of the clip's non-silent stretches, on 10 ms frames."""
    hop = int(INPUT_SAMPLE_RATE_HZ * _FRAME_MS / 1000)
    n = len(samples) // hop
    if n == 0:
        return []
    rms = np.sqrt(np.mean(samples[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)) + 1e-12
    voiced = 20 * np.log10(rms / rms.max()) > _SILENCE_DB
    runs, start = [], None
    for i, v in enumerate(voiced):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start * _FRAME_MS, i * _FRAME_MS))
            start = None
    if start is not None:
        runs.append((start * _FRAME_MS, n * _FRAME_MS))
    return runs


def _words(annotation: Path) -> tuple[list[str], list[float]]:
    data = json.loads(annotation.read_text())
    words = [re.sub(r"[^\w']", "", w.lower()) for w in data["words"]]
    return words, [1000.0 * float(s) for s in data["starts"]]


def _clip(root: Path, phrase: str, size: str, voice: str) -> tuple[Path, Path] | None:
    wavs = sorted((root / "audio").glob(f"{phrase}_{size}_*_en-US-Wavenet-{voice}.wav"))
    if not wavs:
        return None
    return wavs[0], root / "annotation" / f"{wavs[0].stem}.json"


def phrases_in(root: Path) -> list[str]:
    return sorted({p.name.split("_short_")[0] for p in (root / "audio").glob("*_short_*.wav")})


def read_samples(wav: Path) -> np.ndarray:
    from duplexer.protocols.wav import read_wav

    return pcm16_to_float(read_wav(wav, INPUT_SAMPLE_RATE_HZ))


def find_pauses(root: Path, voices: Sequence[str], phrases: Sequence[str] | None = None) -> list[Pause]:
    """Every short end, long-form mid-turn pause and long end of the chosen voices and phrases."""
    pauses: list[Pause] = []
    for phrase in phrases or phrases_in(root):
        for voice in voices:
            short, long = _clip(root, phrase, "short", voice), _clip(root, phrase, "long", voice)
            if short is None or long is None:
                continue
            short_runs = _voiced_runs(read_samples(short[0]))
            long_runs = _voiced_runs(read_samples(long[0]))
            if not short_runs or not long_runs:
                continue
            pauses.append(
                Pause(f"{short[0].stem}:short_end", phrase, voice, "short_end", short[0], short_runs[-1][1], math.inf)
            )
            short_words, _ = _words(short[1])
            long_words, starts = _words(long[1])
            pairs = zip(short_words, long_words, strict=False)
            split = next((i for i, (a, b) in enumerate(pairs) if a != b), len(short_words))
            resume_ms = starts[min(split, len(starts) - 1)]
            # The short form's words end with the last voiced stretch that ends by the continuation's
            # (annotated, approximate) start.
            before = [run for run in long_runs if run[1] <= resume_ms + _WORD_START_SLACK_MS]
            after = [run for run in long_runs if run[1] > resume_ms + _WORD_START_SLACK_MS]
            if after:
                end_ms = before[-1][1] if before else resume_ms  # no gap at all: cut at the annotated start
                pauses.append(
                    Pause(
                        f"{long[0].stem}:long_mid",
                        phrase,
                        voice,
                        "long_mid",
                        long[0],
                        end_ms,
                        max(0.0, after[0][0] - end_ms),
                    )
                )
            pauses.append(
                Pause(f"{long[0].stem}:long_end", phrase, voice, "long_end", long[0], long_runs[-1][1], math.inf)
            )
    return pauses


def _audio_until(samples: np.ndarray, until_ms: float) -> np.ndarray:
    """The clip up to ``until_ms``, with digital silence after its end (the user stays quiet)."""
    n = round(until_ms * INPUT_SAMPLE_RATE_HZ / 1000)
    if n <= len(samples):
        return samples[:n]
    return np.concatenate([samples, np.zeros(n - len(samples), dtype=np.float32)])


AudioDetector = Callable[[np.ndarray], float]
Transcriber = Callable[[np.ndarray], str]
TextDetector = Callable[[str], float]


def record_pause(pause: Pause, audio_p: AudioDetector, transcribe: Transcriber, text_p: TextDetector) -> Recording:
    """Ask the detectors about one pause, as the actor would (see the module's docstring)."""
    samples = read_samples(pause.wav)[: round(pause.speech_end_ms * INPUT_SAMPLE_RATE_HZ / 1000)]
    stop_ms = pause.speech_end_ms + VAD_STOP_LAG_MS
    started = time.perf_counter()
    transcript = transcribe(_audio_until(samples, stop_ms))
    p_text = float(text_p(transcript))
    text_ms = (time.perf_counter() - started) * 1000.0
    p_audio: list[float] = []
    audio_ms: list[float] = []
    for offset_ms in ASK_OFFSETS_MS:
        started = time.perf_counter()
        p_audio.append(float(audio_p(_audio_until(samples, stop_ms + offset_ms))))
        audio_ms.append((time.perf_counter() - started) * 1000.0)
    return Recording(
        name=pause.name,
        phrase=pause.phrase,
        voice=pause.voice,
        kind=pause.kind,
        pause_ms=pause.pause_ms,
        transcript=transcript,
        p_text=p_text,
        text_ms=text_ms,
        p_audio=p_audio,
        audio_ms=audio_ms,
    )


def load_cache(path: Path) -> dict[str, Recording]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("version") != CACHE_VERSION or list(data.get("ask_offsets_ms", [])) != list(ASK_OFFSETS_MS):
        return {}  # recorded under other asks: record again
    out = {}
    for item in data["recordings"]:
        item["pause_ms"] = math.inf if item["pause_ms"] is None else item["pause_ms"]
        out[item["name"]] = Recording(**item)
    return out


def save_cache(path: Path, recordings: Iterable[Recording]) -> None:
    items = []
    for rec in sorted(recordings, key=lambda r: r.name):
        item = asdict(rec)
        item["pause_ms"] = None if math.isinf(rec.pause_ms) else rec.pause_ms
        items.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": CACHE_VERSION, "ask_offsets_ms": list(ASK_OFFSETS_MS), "recordings": items}
    path.write_text(json.dumps(payload, indent=1))
