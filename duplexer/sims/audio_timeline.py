"""Who spoke when, found in audio: the timelines :mod:`duplexer.sims.turn_metrics` scores a recording by.

Each channel is read as Full-Duplex-Bench (FDB) v1.5 reads it: Silero VAD over the whole channel,
with the rule of Silero's ``get_speech_timestamps`` (threshold 0.5, a region ends after
``VAD_MIN_SILENCE_MS`` below ``threshold - 0.15``), except that a region needs only
``VAD_MIN_SPEECH_MS`` (two windows, not Silero's 250 ms), so a short word over the bot is heard.
Silero's windows are 32 ms and its edges late (by up to a few windows at an onset, by its minimum
silence and more at an end), so each region is
refined by energy: its speech is the audible audio (:func:`duplexer.kernels.loudness.audible_spans`,
-40 dBFS, sample-exact edges) that overlaps the region widened by one VAD window, followed out to
``EDGE_SEARCH_MS`` and split where it falls silent for ``VAD_MIN_SILENCE_MS``. Where the channel's
noise floor is itself audible, or audio is still audible at the end of the search, energy cannot
tell speech from noise and the VAD's edges are kept.

User turns are then formed from the user's speech spans, by the script's annotations where there
are any, else by a rule (:func:`user_turns_from_spans`); bot speech is merged by the scorer itself
(FDB's 500 ms).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplexer.actors.models.silero_vad import SILERO_WINDOW_SAMPLES, SileroVad
from duplexer.kernels.audio import resample
from duplexer.kernels.loudness import AUDIBLE_DBFS, AUDIBLE_FRAME_MS, audible_spans
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
from duplexer.sims.turn_metrics import (
    USER_MERGE_GAP_MS,
    Score,
    Speech,
    TurnKind,
    UserTurn,
    Word,
    merge_speech,
    score_turns,
    summarize_turns,
)

VAD_RATE_HZ = INPUT_SAMPLE_RATE_HZ
"""Silero runs on 16 kHz audio; other rates are resampled to it for the VAD only."""
VAD_WINDOW_MS = 1000.0 * SILERO_WINDOW_SAMPLES / VAD_RATE_HZ
"""One Silero window (32 ms): the VAD's resolution, and the margin its regions are refined within."""
VAD_THRESHOLD = 0.5
"""A window is speech at this probability or above (FDB v1.5 and Silero's default)."""
VAD_NEG_THRESHOLD = VAD_THRESHOLD - 0.15
"""A speech region ends only where the probability falls below this (Silero's hysteresis)."""
VAD_MIN_SILENCE_MS = 100.0
"""A region ends after this much silence (Silero's default); refined speech is split at silences
this long, so shorter gaps (stop closures, breaths between words) stay inside one span."""
VAD_MIN_SPEECH_MS = 2 * VAD_WINDOW_MS
"""A VAD region shorter than this is dropped before refinement."""
MIN_SPEECH_MS = 100.0
"""A refined span shorter than this (a click beside speech) is not speech."""
EDGE_SEARCH_MS = 250.0
"""How far beyond a VAD region its audible edges are followed before they count as noise."""
NOISE_FLOOR_PERCENTILE = 90.0
"""The noise floor is the level 90% of the frames away from speech stay under."""
BACKCHANNEL_MAX_MS = 1000.0
"""Without annotations, a user span shorter than this that starts over the bot is a backchannel."""
TURN_GAP_MS = 1500.0
"""Without annotations, the user's speech after a silence this long starts a new turn (here, and
where talk and the demo split a recorded or live user into turns)."""


def vad_probabilities(samples: np.ndarray, rate_hz: int, vad: SileroVad | None = None) -> np.ndarray:
    """Silero's speech probability for every whole 32 ms window of mono float ``samples``."""
    x = resample(np.asarray(samples, dtype=np.float32), rate_hz, VAD_RATE_HZ)
    vad = vad or SileroVad()
    vad.reset()
    n = len(x) // SILERO_WINDOW_SAMPLES
    return np.array(
        [vad.window_probability(x[i * SILERO_WINDOW_SAMPLES : (i + 1) * SILERO_WINDOW_SAMPLES]) for i in range(n)],
        dtype=np.float32,
    )


def vad_regions(probabilities: np.ndarray) -> list[tuple[float, float]]:
    """(start_ms, end_ms) of speech by Silero's ``get_speech_timestamps`` rule, without padding."""
    regions: list[tuple[float, float]] = []
    start: float | None = None
    silent_since: float | None = None
    for i, p in enumerate(probabilities):
        t = i * VAD_WINDOW_MS
        if p >= VAD_THRESHOLD:
            silent_since = None
            if start is None:
                start = t
            continue
        if start is None or p >= VAD_NEG_THRESHOLD:
            continue
        if silent_since is None:
            silent_since = t
        if t - silent_since >= VAD_MIN_SILENCE_MS:
            if silent_since - start >= VAD_MIN_SPEECH_MS:
                regions.append((start, silent_since))
            start = silent_since = None
    if start is not None:
        end = len(probabilities) * VAD_WINDOW_MS if silent_since is None else silent_since
        if end - start >= VAD_MIN_SPEECH_MS:
            regions.append((start, end))
    return regions


def refine_region(samples: np.ndarray, rate_hz: int, region: tuple[float, float]) -> list[tuple[float, float]]:
    """A VAD region's speech by energy: the audible stretches that overlap it widened by one VAD window.

    Stretches are split at silences of ``VAD_MIN_SILENCE_MS`` and followed out to
    ``EDGE_SEARCH_MS`` beyond the region (Silero's onset can lag a stretch that starts abruptly by a
    few windows). A stretch still audible there is noise above the audible level, not an onset or
    an end: for that edge the VAD's is kept.
    """
    total_ms = 1000.0 * len(samples) / rate_hz
    lo_ms, hi_ms = max(0.0, region[0] - EDGE_SEARCH_MS), min(total_ms, region[1] + EDGE_SEARCH_MS)
    lo, hi = int(lo_ms * rate_hz / 1000.0), int(np.ceil(hi_ms * rate_hz / 1000.0))
    offset_ms, window_ms = 1000.0 * lo / rate_hz, 1000.0 * (hi - lo) / rate_hz
    spans = [
        (offset_ms + a, offset_ms + b)
        for a, b in audible_spans(samples[lo:hi], rate_hz, AUDIBLE_DBFS, max_gap_ms=VAD_MIN_SILENCE_MS)
    ]
    near = [(a, b) for a, b in spans if b > region[0] - VAD_WINDOW_MS and a < region[1] + VAD_WINDOW_MS]
    if not near:
        return [region]  # speech quieter than the audible level: the VAD's word for it
    refined: list[tuple[float, float]] = []
    for start, end in near:
        if start <= offset_ms and lo > 0:
            start = region[0]
        if end >= offset_ms + window_ms and hi < len(samples):
            end = region[1]
        if end > start:
            refined.append((start, end))
    return refined


def noise_floor_dbfs(samples: np.ndarray, rate_hz: int, regions: Sequence[tuple[float, float]]) -> float:
    """The level most of the audio away from speech stays under: the ``NOISE_FLOOR_PERCENTILE``
    of the peak levels of its ``AUDIBLE_FRAME_MS`` frames; -inf where there is none."""
    frame = max(1, int(rate_hz * AUDIBLE_FRAME_MS / 1000.0))
    n = len(samples) // frame
    if n == 0:
        return float("-inf")
    quiet = np.ones(n, dtype=bool)
    for start, end in regions:
        a = max(0, int((start - EDGE_SEARCH_MS) / AUDIBLE_FRAME_MS))
        quiet[a : int(np.ceil((end + EDGE_SEARCH_MS) / AUDIBLE_FRAME_MS))] = False
    if not quiet.any():
        return float("-inf")
    peaks = np.abs(samples[: n * frame]).reshape(n, frame).max(axis=1)[quiet]
    level = float(np.percentile(peaks, NOISE_FLOOR_PERCENTILE))
    return 20.0 * np.log10(level) if level > 0.0 else float("-inf")


def speech_spans(samples: np.ndarray, rate_hz: int, vad: SileroVad | None = None) -> list[tuple[float, float]]:
    """(start_ms, end_ms) of the speech in one channel (mono, int16 or float in [-1, 1]), in order.

    Edges are refined by energy unless the channel's noise floor is itself audible; then they are
    the VAD's (to a window, and late at ends by about ``VAD_MIN_SILENCE_MS``).
    """
    x = _as_float(samples)
    regions = vad_regions(vad_probabilities(x, rate_hz, vad))
    refine = noise_floor_dbfs(x, rate_hz, regions) < AUDIBLE_DBFS
    spans: list[tuple[float, float]] = []
    for region in regions:
        for start, end in refine_region(x, rate_hz, region) if refine else [region]:
            if spans and start - spans[-1][1] < VAD_MIN_SILENCE_MS:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
    return [(round(s, 1), round(e, 1)) for s, e in spans if e - s >= MIN_SPEECH_MS]


def played_speech_spans(samples: np.ndarray, rate_hz: int, vad: SileroVad | None = None) -> list[tuple[float, float]]:
    """(start_ms, end_ms) of the speech in a channel that carries an engine's output (the bot's).

    Played audio is clean: where the channel's noise floor is below the audible level, every
    audible stretch is the bot's speech, to the sample, however short (20 ms of a reply cut off at
    once is still heard over the user, and the VAD cannot see it). Where it is noisy, as
    :func:`speech_spans`.
    """
    x = _as_float(samples)
    regions = vad_regions(vad_probabilities(x, rate_hz, vad))
    if noise_floor_dbfs(x, rate_hz, regions) >= AUDIBLE_DBFS:
        return [(round(s, 1), round(e, 1)) for s, e in regions if e - s >= MIN_SPEECH_MS]
    # A stretch shorter than one audible frame is a click, not speech (a 20 ms burst is speech).
    spans = audible_spans(x, rate_hz, AUDIBLE_DBFS)
    return [(round(s, 1), round(e, 1)) for s, e in spans if e - s >= AUDIBLE_FRAME_MS]


def _as_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples.astype(np.float32)


@dataclass(frozen=True)
class TurnWindow:
    """Where a script (or a benchmark's annotation) says the user took a turn or backchannelled."""

    start_ms: float
    end_ms: float
    kind: TurnKind = "turn"


def bot_speech_from_spans(bot_spans: Sequence[tuple[float, float]], words: Sequence[Word] = ()) -> list[Speech]:
    """The bot's speech found in audio, each span with the ``words`` that start in it (from an ASR
    with word times, where there is one); whether a reply was cut off is not known from audio."""
    return [Speech(start, end, tuple(w for w in words if start <= w.start_ms < end)) for start, end in bot_spans]


def user_turns_from_spans(
    user_spans: Sequence[tuple[float, float]],
    bot_spans: Sequence[tuple[float, float]],
    annotations: Sequence[TurnWindow] | None = None,
) -> list[UserTurn]:
    """The user's speech spans grouped into turns; the gaps between a turn's spans are its pauses.

    With ``annotations``, each span joins the window it overlaps most (spans outside every window
    are not the user's turns, e.g. noise). Without, by rule: a span starts a new turn after a
    silence of ``TURN_GAP_MS``, or when the bot took a turn inside the silence before it (its
    speech, merged as the scorer merges it, began and ended there); bot speech that was already
    going and stopped in the silence is a barge-in or talk-over, and the turn goes on. A new span
    shorter than ``BACKCHANNEL_MAX_MS`` that starts while the bot speaks is a backchannel, unless
    the user goes on within ``USER_MERGE_GAP_MS`` (FDB v1.5's user merge: "Wait, | tell me ..."
    is a barge-in). Pauses are the raw gaps: a pause shorter than 600 ms is still one the bot may
    talk into.
    """
    spans = sorted(user_spans)
    if annotations is not None:
        return _turns_in_windows(spans, annotations)
    bot = merge_speech(bot_speech_from_spans(bot_spans))
    turns: list[tuple[list[tuple[float, float]], TurnKind]] = []
    current: list[tuple[float, float]] | None = None
    for i, (start, end) in enumerate(spans):
        last_end = current[-1][1] if current else None
        over_bot = any(s.start_ms <= start < s.end_ms for s in bot)
        goes_on = i + 1 < len(spans) and spans[i + 1][0] - end <= USER_MERGE_GAP_MS
        backchannel = over_bot and end - start < BACKCHANNEL_MAX_MS and not goes_on
        since = float("-inf") if last_end is None else last_end
        took_floor = last_end is not None and any(since < s.start_ms <= start for s in bot)
        answered = took_floor and any(since < s.start_ms and s.end_ms <= start for s in bot)
        if backchannel and (last_end is None or took_floor or start - last_end >= TURN_GAP_MS):
            # "mm-hm" over the bot's answer: the user's turn before it is over
            turns.append(([(start, end)], "backchannel"))
            current = None
            continue
        if last_end is not None and start - last_end < TURN_GAP_MS and not answered:
            assert current is not None
            current.append((start, end))
            continue
        current = [(start, end)]
        turns.append((current, "turn"))
    return [UserTurn(tuple(segments), kind) for segments, kind in sorted(turns, key=lambda t: t[0][0])]


def _turns_in_windows(spans: Sequence[tuple[float, float]], windows: Sequence[TurnWindow]) -> list[UserTurn]:
    groups: list[list[tuple[float, float]]] = [[] for _ in windows]
    for start, end in spans:
        overlaps = [min(end, w.end_ms) - max(start, w.start_ms) for w in windows]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best >= 0 and overlaps[best] > 0.0:
            groups[best].append((start, end))
    turns = [UserTurn(tuple(group), window.kind) for group, window in zip(groups, windows, strict=True) if group]
    return sorted(turns, key=lambda t: t.start_ms)


@dataclass
class RecordingScore:
    """A recording's speech per channel, its user turns, and their scores."""

    user_spans: list[tuple[float, float]]
    bot_spans: list[tuple[float, float]]
    user_turns: list[UserTurn]
    score: Score
    summary: dict[str, Any]


def score_recording(
    user: np.ndarray,
    bot: np.ndarray,
    rate_hz: int,
    turns: Sequence[TurnWindow] | None = None,
    bot_words: Sequence[Word] = (),
) -> RecordingScore:
    """Score a two-channel recording (the user's and the bot's audio, same rate) as a listener hears it:
    the user's speech by :func:`speech_spans`, the bot's by :func:`played_speech_spans`.

    ``turns``: where the user's turns are, if known (else found by rule). ``bot_words``: the bot's
    words with times, if known; FDB's takeover rule counts them (without, it judges by duration).
    """
    vad = SileroVad()
    user_spans = speech_spans(user, rate_hz, vad)
    bot_spans = played_speech_spans(bot, rate_hz, vad)
    user_turns = user_turns_from_spans(user_spans, bot_spans, turns)
    score = score_turns(user_turns, bot_speech_from_spans(bot_spans, bot_words))
    return RecordingScore(user_spans, bot_spans, user_turns, score, summarize_turns(score.turns))


class LazyWhisper:
    """The project's Whisper as words with times (text, start_ms, end_ms) of 16 kHz float audio,
    loaded on the first call: ``duplexer score --words`` and ``eval fdb`` need it only for audio
    that has no words yet."""

    def __init__(self) -> None:
        self._asr: Any = None
        self._lock = threading.Lock()

    def __call__(self, audio: Any) -> Any:
        with self._lock:
            if self._asr is None:
                from duplexer.actors.models.whisper_asr import WhisperAsr

                self._asr = WhisperAsr(window="full")
        return self._asr.transcribe_words(audio)
