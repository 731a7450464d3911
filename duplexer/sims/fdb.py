"""Full-Duplex-Bench (FDB) v1 scoring of a sample folder tree, the way FDB's evaluators score it.

A sample is a folder holding ``input.wav``; which task it belongs to is given by the annotation it
holds (``pause.json``, ``turn_taking.json``, ``interrupt.json``; ``metadata.json`` for v1.5; none
for ICC backchannel). The system's answer is ``output.wav`` beside it, on the input's clock, and
``output.json``, its words with times. Takeover (TOR) is FDB's rule, defined once in
:func:`duplexer.sims.turn_metrics.is_takeover`. docs/fdb.md describes each figure and what differs
from FDB's scripts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from duplexer.protocols.wav import MAX_WAV_S, WavError, wav_info
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
from duplexer.runtime.untrusted import UntrustedInputError, finite_number, load_json
from duplexer.sims.audio_timeline import speech_spans
from duplexer.sims.turn_metrics import TAKEOVER_MIN_WORDS, Speech, Word, is_takeover, percentiles

INPUT_WAV = "input.wav"
OUTPUT_WAV = "output.wav"
OUTPUT_JSON = "output.json"

TASK_FILES: dict[str, str | None] = {
    "user_interruption": "interrupt.json",
    "smooth_turn_taking": "turn_taking.json",
    "pause_handling": "pause.json",
    "v1_5": "metadata.json",
    "backchannel": None,
}
"""Task name (as FDB's evaluate.py names it) -> the annotation file that marks a sample of it,
checked in this order; a sample with none of them is an ICC backchannel sample."""
TASK_ALIASES = {"interrupt": "user_interruption", "turn_taking": "smooth_turn_taking", "pause": "pause_handling"}
V1_TASKS = ("pause_handling", "smooth_turn_taking", "user_interruption", "backchannel")
"""The tasks with v1 tables; v1.5 samples are run (outputs written) but their labels need a judge."""

ASR_RATE_HZ = INPUT_SAMPLE_RATE_HZ
"""Words and backchannel speech are found on 16 kHz mono audio (FDB's ASR and VAD rate)."""
BACKCHANNEL_WINDOW_MS = 200.0
"""FDB backchannel: bins of the backchannel-density histogram compared with the ICC ground truth."""
BACKCHANNEL_LONG_MS = 3000.0
"""FDB backchannel: a speech segment longer than this is a turn taken, and ends the sample's scan."""
BACKCHANNEL_SHORT_MS = 1000.0
BACKCHANNEL_MAX_SHORT_WORDS = 2
"""FDB backchannel: a segment under 1 s with at most this many words is not a takeover."""
BACKCHANNEL_MAX_WORDS = TAKEOVER_MIN_WORDS - 1
"""FDB backchannel: a segment with more words than this (FDB's "more than 3") is a takeover whatever its length."""
SEGMENT_MIN_SPEECH_MS = 250.0
SEGMENT_PAD_MS = 30.0
"""Speech segments of output.wav for backchannel, as FDB takes them from Silero VAD's defaults: the
speech found by :func:`~duplexer.sims.audio_timeline.speech_spans` (Silero, gaps of 100 ms closed),
at least this long, padded by this much on each side."""
JSD_EPSILON = 1e-10

Transcriber = Callable[[np.ndarray], Sequence[tuple[str, float, float]]]
"""16 kHz float mono audio -> (word, start_ms, end_ms), times from the audio's start."""


class FdbError(ValueError):
    """A tree, sample or file cannot be used; the message names it and what is wrong."""


@dataclass(frozen=True)
class Sample:
    folder: Path
    task: str
    name: str
    """The folder relative to the tree's root (its id in tables)."""

    def path(self, file: str) -> Path:
        return self.folder / file


def task_name(text: str) -> str:
    """A task as FDB names it, from that name or the stem of its annotation file."""
    name = TASK_ALIASES.get(text, text)
    if name not in TASK_FILES:
        raise FdbError(f"unknown task {text!r} (known: {', '.join([*TASK_FILES, *TASK_ALIASES])})")
    return name


def sample_task(folder: Path) -> str:
    for task, file in TASK_FILES.items():
        if file is not None and (folder / file).is_file():
            return task
    return "backchannel"


def discover(root: Path, tasks: Sequence[str] = ()) -> list[Sample]:
    """Every folder under ``root`` (itself included) holding input.wav, in sorted order."""
    if not root.is_dir():
        raise FdbError(f"{root}: no such folder")
    samples: list[Sample] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if INPUT_WAV not in filenames:
            continue
        folder = Path(dirpath)
        task = sample_task(folder)
        if not tasks or task in tasks:
            samples.append(Sample(folder, task, folder.relative_to(root).as_posix() or "."))
    if not samples:
        wanted = f" of task {', '.join(tasks)}" if tasks else ""
        raise FdbError(f"{root}: no sample folders{wanted} (a sample is a folder holding {INPUT_WAV})")
    return samples


# ------------------------------------------------------------------ files


MAX_JSON_BYTES = 16 << 20
"""Largest annotation, output.json or --icc-gt file read (16 MiB); FDB's are a few kB."""


def read_json(path: Path) -> Any:
    """A JSON file of the tree, within the limits of :func:`duplexer.runtime.untrusted.load_json`
    (size, nesting, digits, finite numbers); an FdbError naming the file otherwise."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise FdbError(f"{path}: no such file") from None
    except OSError as exc:
        raise FdbError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return load_json(data, "the file", MAX_JSON_BYTES)
    except UntrustedInputError as exc:
        raise FdbError(f"{path}: {exc}") from None


MAX_WORD_CHARS = 100
"""Longest word kept from output.json."""


def _seconds_ms(value: Any) -> float:
    """A time in seconds from a JSON file as ms: a finite number within an hour (ValueError otherwise)."""
    return 1000.0 * finite_number(value, "a time", 0.0, MAX_WAV_S)


def annotation_span_ms(sample: Sample) -> tuple[float, float] | None:
    """The [start, end] of the task's annotated event in the input, in ms (None: the task has none)."""
    file = TASK_FILES[sample.task]
    if file is None or sample.task == "v1_5":
        return None
    data = read_json(sample.path(file))
    try:
        start_s, end_s = data[0]["timestamp"][:2]
        return _seconds_ms(start_s), _seconds_ms(end_s)
    except (IndexError, KeyError, TypeError, ValueError):
        raise FdbError(f"{sample.path(file)}: expected [{{'timestamp': [start_s, end_s], ...}}]") from None


def words_from_chunks(data: Any, where: Path) -> list[Word]:
    """output.json's words; a null end (an ASR that could not place it) takes the word's start."""
    try:
        words = []
        for chunk in data["chunks"]:
            start_s, end_s = chunk["timestamp"][:2]
            end_s = start_s if end_s is None else end_s
            words.append(Word(str(chunk["text"]).strip()[:MAX_WORD_CHARS], _seconds_ms(start_s), _seconds_ms(end_s)))
    except (KeyError, TypeError, ValueError, IndexError):
        raise FdbError(f"{where}: expected {{'text', 'chunks': [{{'text', 'timestamp': [start_s, end_s]}}]}}") from None
    return words


def output_json(words: Sequence[Word]) -> dict[str, Any]:
    """FDB's output.json: the text and one chunk per word, times in seconds."""
    return {
        "text": " ".join(w.text for w in words),
        "chunks": [
            {"text": w.text, "timestamp": [round(w.start_ms / 1000.0, 3), round(w.end_ms / 1000.0, 3)]} for w in words
        ],
    }


def wav_format(path: Path) -> tuple[int, int, int]:
    """(sample rate in Hz, frames, channels) of a PCM wav, within the limits every wav input has."""
    try:
        info = wav_info(path)
    except WavError as exc:
        raise FdbError(str(exc)) from None
    return info.rate_hz, info.frames, info.channels


def transcribe_output(sample: Sample, audio_16k: np.ndarray, transcribe: Transcriber) -> list[Word]:
    """Words of output.wav as FDB's ASR step gives them: for an interruption sample only the audio
    after the interruption ends is transcribed, with times kept absolute."""
    offset_ms = 0.0
    if sample.task == "user_interruption":
        span = annotation_span_ms(sample)
        assert span is not None
        offset_ms = span[1]
        audio_16k = audio_16k[int(offset_ms * ASR_RATE_HZ / 1000.0) :]
    return [Word(text, start + offset_ms, end + offset_ms) for text, start, end in transcribe(audio_16k)]


# ------------------------------------------------------------------ scoring


@dataclass
class SampleScore:
    """One sample's figures: a row of the per-sample CSV."""

    sample: str
    task: str
    words: int = 0
    span_ms: float = 0.0
    tor: int | None = None
    """FDB's took-the-turn (0/1) by :func:`is_takeover` (backchannel: FDB's per-segment rule)."""
    latency_ms: float | None = None
    """First word after the turn end / interruption end, minus it; negative set to 0; TOR = 1 only."""
    backchannels: int | None = None
    backchannel_per_s: float | None = None
    jsd: float | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _takeover(words: Sequence[Word], from_ms: float) -> tuple[bool, list[Word]]:
    """FDB's rule over the words starting at or after ``from_ms``; also returns those words."""
    heard = sorted((w for w in words if w.start_ms >= from_ms), key=lambda w: w.start_ms)
    if not heard:
        return False, heard
    speech = Speech(heard[0].start_ms, max(w.end_ms for w in heard), tuple(heard))
    return is_takeover([speech], from_ms, math.inf), heard


def score_sample(
    sample: Sample, words: Sequence[Word], output_16k: np.ndarray | None = None, icc_gt: dict[str, Any] | None = None
) -> SampleScore:
    """One sample scored as its task's FDB evaluator scores it (backchannel needs the audio)."""
    score = SampleScore(sample.name, sample.task)
    if sample.task == "v1_5":  # its behaviour labels need an LLM judge; FDB has no v1.5 timing table
        score.words = len(words)
        return score
    if sample.task == "backchannel":
        assert output_16k is not None
        return _score_backchannel(score, sample, words, output_16k, icc_gt)
    timed = sample.task in ("smooth_turn_taking", "user_interruption")
    span = annotation_span_ms(sample) if timed else None  # FDB does not read pause.json
    # Pause handling and turn-taking use every word; an interruption only those after it ends.
    from_ms = span[1] if sample.task == "user_interruption" and span is not None else -math.inf
    took, heard = _takeover(words, from_ms)
    score.words = len(heard)
    score.span_ms = max(w.end_ms for w in heard) - heard[0].start_ms if heard else 0.0
    score.tor = int(took)
    if took and span is not None:
        turn_end_ms = span[0] if sample.task == "smooth_turn_taking" else span[1]
        score.latency_ms = max(0.0, heard[0].start_ms - turn_end_ms)
    return score


def speech_segments_ms(audio_16k: np.ndarray) -> list[tuple[float, float]]:
    """Where output.wav speaks, with Silero VAD's default minimum and padding."""
    duration_ms = 1000.0 * len(audio_16k) / ASR_RATE_HZ
    spans = speech_spans(audio_16k, ASR_RATE_HZ)
    return [
        (max(0.0, s - SEGMENT_PAD_MS), min(duration_ms, e + SEGMENT_PAD_MS))
        for s, e in spans
        if e - s >= SEGMENT_MIN_SPEECH_MS
    ]


def _score_backchannel(
    score: SampleScore, sample: Sample, words: Sequence[Word], audio_16k: np.ndarray, icc_gt: dict[str, Any] | None
) -> SampleScore:
    """FDB's eval_backchannel.py: each segment's TOR overwrites the last; a > 3 s segment ends the scan."""
    tor = 0
    backchannels: list[tuple[float, float]] = []
    for start, end in speech_segments_ms(audio_16k):
        length = end - start
        if length > BACKCHANNEL_LONG_MS:
            tor = 1
            break
        n = sum(1 for w in words if w.start_ms <= end and w.end_ms > start)
        if n > BACKCHANNEL_MAX_WORDS:
            tor = 1
        elif length < BACKCHANNEL_SHORT_MS:
            tor = 0 if n <= BACKCHANNEL_MAX_SHORT_WORDS else 1
        else:
            tor = 1
        backchannels.append((start, end))
    duration_ms = 1000.0 * len(audio_16k) / ASR_RATE_HZ
    score.words, score.tor, score.backchannels = len(words), tor, len(backchannels)
    score.backchannel_per_s = len(backchannels) / (duration_ms / 1000.0) if duration_ms > 0 else 0.0
    key = sample.folder.name
    if icc_gt is not None and key in icc_gt:
        score.jsd = backchannel_jsd(backchannels, duration_ms, np.asarray(icc_gt[key], dtype=float))
    return score


def backchannel_jsd(segments: Sequence[tuple[float, float]], duration_ms: float, truth: np.ndarray) -> float:
    """FDB's "JSD": the Jensen-Shannon distance (natural log) of the backchannel-density histogram
    in 200 ms bins against the ground truth interpolated onto as many bins; 1 with no backchannels."""
    if not segments:
        return 1.0
    bins = int(duration_ms / BACKCHANNEL_WINDOW_MS) + 1
    hist = np.zeros(bins)
    for start, end in segments:
        a, b = int(start / BACKCHANNEL_WINDOW_MS), int(end / BACKCHANNEL_WINDOW_MS)
        hist[a : min(b + 1, bins)] += 1.0
    p = (hist + JSD_EPSILON) / (hist + JSD_EPSILON).sum()
    q = np.interp(np.linspace(0, 1, bins), np.linspace(0, 1, len(truth)), truth)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2.0)))


# ------------------------------------------------------------------ tables


@dataclass
class TaskSummary:
    """One task's v1 figures, reduced as FDB reduces them: means over samples; latency over TOR = 1."""

    task: str
    samples: int
    scored: int
    tor: float | None
    latency_s: float | None = None
    latency_p50_s: float | None = None
    backchannel_per_s: float | None = None
    jsd: float | None = None
    errors: int = 0


def summarize(scores: Sequence[SampleScore]) -> list[TaskSummary]:
    out: list[TaskSummary] = []
    for task in V1_TASKS:
        rows = [s for s in scores if s.task == task]
        if not rows:
            continue
        ok = [s for s in rows if s.error is None and s.tor is not None]
        latencies = [s.latency_ms for s in ok if s.latency_ms is not None]
        jsds = [s.jsd for s in ok if s.jsd is not None]
        summary = TaskSummary(
            task,
            len(rows),
            len(ok),
            _mean([float(s.tor) for s in ok if s.tor is not None]),
            errors=len(rows) - len(ok),
        )
        if task in ("smooth_turn_taking", "user_interruption"):
            summary.latency_s = _mean([v / 1000.0 for v in latencies])
            p50 = percentiles(latencies, (50,))["p50"]
            summary.latency_p50_s = None if p50 is None else round(p50 / 1000.0, 3)
        if task == "backchannel":
            summary.backchannel_per_s = _mean([s.backchannel_per_s for s in ok if s.backchannel_per_s is not None])
            summary.jsd = _mean(jsds)
        out.append(summary)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None
