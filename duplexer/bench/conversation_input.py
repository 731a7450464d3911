"""The conversations `duplexer bench conversation` replays: recorded questions as a scripted live user.

A conversation is a list of recorded turns, each trimmed to its speech. By default one conversation
per VAP voice (its 18 phrases, each short form before its long form); or any folder of wavs, one
turn per file in name order. A VAP long form says the short form's words and goes on ("So do you
play basketball | on Thursdays?"); the WaveNet voices go on without a break, so a mid-turn pause
of ``pause_ms`` is put where the short form ends (found from the annotation's word starts): the
point where a detector that hears only words would take the floor.

Each turn starts ``gap_ms`` after the bot's reply to the previous one has been heard out (or, with
``fixed_gap``, that long after the previous turn), except every ``interrupt_every``-th, which starts
``barge_in_after_ms`` after the bot begins its reply to the turn before: the user cuts into a reply
that is playing. Waiting for the reply keeps the other turns free of barge-ins however long the
replies run; a fixed gap plays the same input to every configuration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from duplexer.protocols.wav import WavError, read_wav
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
from duplexer.sims.scenario import Backchannel, Noise, Say, Scenario, Segment, Silence, Start
from duplexer.sims.speech_segments import speech_segments_pcm

VAP_PHRASES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vap_phrases"
"""The shared VAP phrase recordings, next to a checkout (``../shared/data/vap_phrases``)."""
DEFAULT_VOICES: tuple[str, ...] = ("E", "F")
"""The VAP voices held out from end-of-turn calibration (A, B and C calibrate)."""
DEFAULT_GAP_MS = 1500.0
"""Silence between the bot's reply and the next turn (with ``fixed_gap``: between the user's turns)."""
REPLY_WAIT_MS = 20_000.0
"""How long after a turn the user waits for the reply to start (an interruption) or end (the next
turn) before going on regardless."""
BARGE_IN_AFTER_MS = 1000.0
"""An interrupting turn starts this long after the bot's reply to the turn before began."""
DEFAULT_INTERRUPT_EVERY = 3
"""Every third VAP phrase's short form (every third file of a folder) interrupts a reply."""
DEFAULT_PAUSE_MS = 800.0
"""The mid-turn pause put into each long form (the VAP recordings have none the VAD can hear): a
hesitation longer than the shortest end-of-turn wait of every preset (live 500 ms, fast 300 ms), near
the 80th percentile of the hesitations ``bench eot`` models, so a policy that trusts a detector too
much takes it over."""
PAUSE_QUIET_DB = -35.0
"""The pause goes in where the audio before the continuation's first word falls this far below the
clip's loudest 10 ms frame, so the cut lands in the quiet between words, not inside one."""
TAIL_MS = 6000.0
"""Silence after the last turn, so its reply is heard."""

VAP_NAME = re.compile(r"^(?P<phrase>.+)_(?P<form>short|long)_(?P<gender>male|female)_en-US-Wavenet-(?P<voice>[A-Z])$")

Form = Literal["short", "long", "turn"]


@dataclass(frozen=True)
class Turn:
    """One recorded user turn, trimmed to its speech, at the pipeline's rate."""

    name: str
    text: str
    form: Form
    pcm: bytes
    interrupts: bool = False
    """It starts while the bot replies to the turn before."""
    pause_ms: tuple[float, float] | None = None
    """The long form's mid-turn pause, from the clip's first audible sample (ms)."""

    @property
    def duration_ms(self) -> float:
        return 1000.0 * (len(self.pcm) // 2) / INPUT_SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Conversation:
    name: str
    turns: tuple[Turn, ...]


def trimmed(pcm: bytes) -> tuple[bytes, list[tuple[float, float]]]:
    """The clip cut to its speech by frame energy, and its speech segments (ms from the cut)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    segments = speech_segments_pcm(samples, INPUT_SAMPLE_RATE_HZ)
    if not segments:
        return pcm, []
    start_ms, end_ms = segments[0][0], segments[-1][1]
    a, b = int(start_ms * INPUT_SAMPLE_RATE_HZ / 1000), int(end_ms * INPUT_SAMPLE_RATE_HZ / 1000)
    return pcm[2 * a : 2 * b], [(s - start_ms, e - start_ms) for s, e in segments]


def quiet_before_ms(pcm: bytes, at_ms: float) -> float:
    """Where the quiet before ``at_ms`` begins (10 ms frames below ``PAUSE_QUIET_DB``); ``at_ms``
    itself where the audio there is not quiet."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frame = INPUT_SAMPLE_RATE_HZ // 100
    n = len(x) // frame
    if n == 0:
        return at_ms
    rms = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(axis=1)) + 1e-9
    quiet = 20.0 * np.log10(rms / rms.max()) < PAUSE_QUIET_DB
    j = min(int(at_ms / 10.0), n)
    while j > 0 and quiet[j - 1]:
        j -= 1
    return 10.0 * j if j < int(at_ms / 10.0) else at_ms


def with_pause(pcm: bytes, at_ms: float, pause_ms: float) -> tuple[bytes, tuple[float, float]]:
    """``pause_ms`` of silence put in at ``at_ms`` (in the quiet before it), and where it lies."""
    cut_ms = quiet_before_ms(pcm, at_ms)
    cut = 2 * int(cut_ms * INPUT_SAMPLE_RATE_HZ / 1000)
    silence = bytes(2 * int(pause_ms * INPUT_SAMPLE_RATE_HZ / 1000))
    return pcm[:cut] + silence + pcm[cut:], (cut_ms, cut_ms + pause_ms + (at_ms - cut_ms))


def _mark_interruptions(turns: list[Turn], every: int, eligible: list[bool]) -> list[Turn]:
    """Every ``every``-th eligible turn (never the first) interrupts."""
    out, count = [], 0
    for i, turn in enumerate(turns):
        if eligible[i]:
            count += 1
        hit = every > 0 and i > 0 and eligible[i] and count % every == 0
        out.append(Turn(turn.name, turn.text, turn.form, turn.pcm, hit, turn.pause_ms))
    return out


def _annotation(root: Path, stem: str) -> dict[str, Any]:
    path = root / "annotation" / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else {"text": stem, "words": [], "starts": []}


def vap_conversation(
    root: Path, voice: str, interrupt_every: int = DEFAULT_INTERRUPT_EVERY, pause_ms: float = DEFAULT_PAUSE_MS
) -> Conversation:
    """One VAP voice's phrases in phrase order, short form first; the short form of every
    ``interrupt_every``-th phrase interrupts (long forms never do: their pause is measured).
    Each long form gets a mid-turn pause of ``pause_ms`` where its short form ends (0: none)."""
    audio = root / "audio"
    found = []
    for path in sorted(audio.glob("*.wav")):
        match = VAP_NAME.match(path.stem)
        if match and match["voice"] == voice:
            found.append((match["phrase"], 0 if match["form"] == "short" else 1, path, match["form"]))
    if not found:
        raise ValueError(f"no VAP phrases of voice {voice!r} in {audio}")
    turns: list[Turn] = []
    for _, _, path, form in sorted(found):
        note = _annotation(root, path.stem)
        raw = read_wav(path, INPUT_SAMPLE_RATE_HZ)
        pcm, segments = trimmed(raw)
        pause = None
        short_words = len(_annotation(root, path.stem.replace("_long_", "_short_"))["words"])
        if form == "long" and pause_ms > 0 and segments and 0 < short_words < len(note["starts"]):
            lead_ms = speech_segments_pcm(np.frombuffer(raw, dtype="<i2"), INPUT_SAMPLE_RATE_HZ)[0][0]
            pcm, pause = with_pause(pcm, 1000.0 * note["starts"][short_words] - lead_ms, pause_ms)
        turns.append(Turn(path.stem, note["text"], "long" if form == "long" else "short", pcm, pause_ms=pause))
    eligible = [t.form == "short" for t in turns]
    return Conversation(voice, tuple(_mark_interruptions(turns, interrupt_every, eligible)))


def folder_conversation(folder: Path, interrupt_every: int = DEFAULT_INTERRUPT_EVERY) -> Conversation:
    """Every wav in ``folder``, in name order, one turn each (text: a ``.txt`` beside it, if any)."""
    paths = sorted(folder.glob("*.wav"))
    if not paths:
        raise ValueError(f"{folder}: no .wav files")
    turns = []
    for path in paths:
        try:
            pcm, _ = trimmed(read_wav(path, INPUT_SAMPLE_RATE_HZ))
        except WavError as exc:
            raise ValueError(str(exc)) from None
        note = path.with_suffix(".txt")
        text = note.read_text().strip() if note.is_file() else path.stem
        turns.append(Turn(path.stem, text, "turn", pcm))
    return Conversation(
        folder.name or "folder", tuple(_mark_interruptions(turns, interrupt_every, [True] * len(turns)))
    )


def limited(conversation: Conversation, limit: int | None) -> Conversation:
    return conversation if limit is None else Conversation(conversation.name, conversation.turns[:limit])


def scenario_of(
    conversation: Conversation,
    gap_ms: float = DEFAULT_GAP_MS,
    barge_in_after_ms: float = BARGE_IN_AFTER_MS,
    fixed_gap: bool = False,
) -> tuple[Scenario, list[bytes]]:
    """The conversation as a live user: one step and one clip per turn."""
    steps: list[Say | Backchannel | Noise | Silence] = []
    for i, turn in enumerate(conversation.turns):
        if i == 0:
            start = Start(at_ms=500.0)
        elif turn.interrupts:
            start = Start(after="bot_start", gap_ms=barge_in_after_ms, wait_ms=REPLY_WAIT_MS)
        elif fixed_gap:
            start = Start(after="previous", gap_ms=gap_ms)
        else:
            start = Start(after="bot_done", gap_ms=gap_ms, wait_ms=REPLY_WAIT_MS)
        segment = Segment(start_ms=0.0, end_ms=max(turn.duration_ms, 1.0))
        steps.append(Say(say=turn.text or turn.name, segments=[segment], start=start))
    total_ms = sum(t.duration_ms + gap_ms + REPLY_WAIT_MS for t in conversation.turns)
    scenario = Scenario(
        name=conversation.name, script=steps, tail_ms=TAIL_MS, max_duration_ms=total_ms + TAIL_MS + 60_000.0
    )
    return scenario, [t.pcm for t in conversation.turns]
