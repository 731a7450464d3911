"""`duplexer bench echo`: a device that hears its own loudspeaker, with the echo canceller off and on.

Sessions: every room x device delay x echo level (:mod:`duplexer.sims.echo_path`), each a run of
bot replies (real speech: VAP phrases of the male voices, two or three phrases per reply) played
through the device. Every other reply, the user (VAP phrases of the female voices) barges in one to
two seconds into it; the bot keeps playing over them (so the user's words are double-talk from end
to end; the barge-in rule's decision only depends on audio before it fires). The same microphone
signal is scored twice in one run: raw (AEC off) and through the echo canceller with its gate (AEC
on), both through the pipeline's Silero VAD, VAD actor and controller (:mod:`duplexer.sims.echo_metrics`).

Figures: ERLE of the linear filter and total (after residual suppression) on bot-only frames after
the first reply; self-interruptions (replies the rule stopped before the user spoke); audible stop
latency (user onset -> bot falls silent, plus one frame of playout) p50; WER of the user's words
(Whisper tiny.en) without echo, with echo and AEC on, with echo raw; the canceller's real-time
factor on one core.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duplexer.bench.asr import DEFAULT_PHRASES
from duplexer.kernels.echo_cancel import EchoCanceller
from duplexer.kernels.loudness import audible_spans
from duplexer.protocols.echo_control import speech_gate_of
from duplexer.runtime.console import progress, say
from duplexer.runtime.events import FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ
from duplexer.sims.echo_metrics import BargeInReplay, ReplyOutcome, erle_db, word_error_rate
from duplexer.sims.echo_path import BOT_LEVEL_DBFS, ROOMS, USER_LEVEL_DBFS, EchoPath, at_level, render_mic

RATE = INPUT_SAMPLE_RATE_HZ
DEFAULT_DELAYS_MS = (40.0, 150.0, 280.0)
DEFAULT_LEVELS_DB = (0.0, -10.0)
DEFAULT_REPLIES = 216
DEFAULT_DRIFT_PPM = 20.0
GAP_S = 0.6
"""Silence between replies."""
WORDS_PAD_S = (0.15, 0.35)
"""Audio kept before the user's first and after their last audible sample for transcription."""
CONVERGED_AFTER_REPLIES = 1
"""ERLE is scored from the end of this many replies on."""


@dataclass
class Clip:
    audio: np.ndarray
    text: str


@dataclass
class Session:
    path: EchoPath
    played: np.ndarray
    user: np.ndarray
    replies: list[tuple[int, int, int | None, Clip | None]]
    """(start, end, user start, user clip) in samples, per reply."""


@dataclass
class SessionResult:
    path: EchoPath
    erle_linear: float
    erle_total: float
    off: list[ReplyOutcome]
    on: list[ReplyOutcome]
    words: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    aec_seconds: float = 0.0
    audio_seconds: float = 0.0


def load_clips(folder: Path, voices: Sequence[str]) -> list[Clip]:
    from duplexer.protocols.wav import read_wav

    clips = []
    for wav in sorted(folder.glob("*.wav")):
        if any(wav.stem.endswith(v) for v in voices):
            pcm = read_wav(wav, RATE)
            audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float64) / 32768.0
            clips.append(Clip(audio, wav.with_suffix(".txt").read_text().strip()))
    return clips


def build_session(path: EchoPath, bots: list[Clip], users: list[Clip], replies: int, seed: int) -> Session:
    """``replies`` bot replies of 2-3 phrases; every other one gets a user barge-in 1-2 s into it."""
    rng = np.random.default_rng(seed)
    played_parts, user_parts, plan = [], [], []
    cursor = 0
    for k in range(replies):
        phrases = [bots[int(i)] for i in rng.choice(len(bots), size=int(rng.integers(2, 4)), replace=False)]
        reply = np.concatenate(
            [np.concatenate([at_level(p.audio, BOT_LEVEL_DBFS), np.zeros(RATE // 5)]) for p in phrases]
        )
        user = np.zeros(len(reply))
        user_start, clip = None, None
        if k % 2 == 1:
            clip = users[int(rng.integers(len(users)))]
            voice = at_level(clip.audio, USER_LEVEL_DBFS)
            user_start = int(rng.uniform(1.0, 2.0) * RATE)
            take = min(len(voice), len(reply) - user_start)
            user[user_start : user_start + take] = voice[:take]
            user_start += cursor
        gap = np.zeros(int(GAP_S * RATE))
        played_parts += [reply, gap]
        user_parts += [user, gap]
        plan.append((cursor, cursor + len(reply), user_start, clip))
        cursor += len(reply) + len(gap)
    played, user = np.concatenate(played_parts), np.concatenate(user_parts)
    total = len(played) // FRAME_SAMPLES * FRAME_SAMPLES
    return Session(path, played[:total], user[:total], plan)


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def run_session(session: Session, vad_factory: object, asr: object | None, seed: int) -> SessionResult:
    mic, echo = render_mic(session.path, session.played, session.user, seed=seed)
    n = FRAME_SAMPLES
    frames = len(mic) // n
    aec = EchoCanceller()
    out, lin = np.zeros(len(mic)), np.zeros(len(mic))
    replay_off = BargeInReplay(vad_factory())  # type: ignore[operator]
    replay_on = BargeInReplay(vad_factory())  # type: ignore[operator]
    onsets = {}
    for start, end, user_start, clip in session.replies:
        onset = None
        if user_start is not None and clip is not None:
            spans = audible_spans(session.user[user_start:end], RATE)
            onset = 1000.0 * user_start / RATE + (spans[0][0] if spans else 0.0)
        onsets[start // n] = (1000.0 * start / RATE, 1000.0 * end / RATE, onset)
    aec_seconds = 0.0
    mic16 = np.clip(np.round(mic * 32768.0), -32768, 32767).astype(np.int16)
    ref16 = np.clip(np.round(session.played * 32768.0), -32768, 32767).astype(np.int16)
    for f in range(frames):
        s = slice(f * n, (f + 1) * n)
        if f in onsets:
            replay_off.start_reply(*onsets[f])
            replay_on.start_reply(*onsets[f])
        t0 = time.thread_time()  # CPU time of this thread: one core's work, whatever else the machine runs
        o = aec.process(mic16[s], ref16[s])
        aec_seconds += time.thread_time() - t0
        out[s] = o / 32768.0
        lin[s] = aec.linear_frame
        replay_off.frame(f, mic16[s].astype("<i2").tobytes())
        replay_on.frame(f, o.astype("<i2").tobytes(), speech_gate_of(aec))
    lat = aec.latency_samples
    out_aligned = np.concatenate([out[lat:], np.zeros(lat)])
    # ERLE: bot-only frames (no user within 100 ms) with echo present, after the first reply(s).
    first = session.replies[min(CONVERGED_AFTER_REPLIES, len(session.replies) - 1)][0]
    user_near = np.convolve((np.abs(session.user) > 0).astype(float), np.ones(RATE // 5), "same") > 0
    echo_on = np.convolve(echo**2, np.ones(n) / n, "same") > 10 ** ((USER_LEVEL_DBFS + session.path.echo_db - 30) / 10)
    mask = echo_on & ~user_near
    mask[:first] = False
    words: dict[str, list[tuple[str, str]]] = {"clean": [], "on": [], "off": []}
    if asr is not None:
        clean = mic - echo
        for _start, end, user_start, clip in session.replies:
            if user_start is None or clip is None:
                continue
            spans = audible_spans(session.user[user_start:end], RATE)
            if not spans:
                continue
            a = max(0, user_start + int((spans[0][0] / 1000 - WORDS_PAD_S[0]) * RATE))
            b = min(len(mic), user_start + int((spans[-1][1] / 1000 + WORDS_PAD_S[1]) * RATE))
            for name, signal in (("clean", clean), ("on", out_aligned), ("off", mic)):
                text = asr.transcribe_audio(signal[a:b].astype(np.float32))  # type: ignore[attr-defined]
                words[name].append((clip.text, text))
    return SessionResult(
        path=session.path,
        erle_linear=erle_db(mic[mask], lin[mask]),
        erle_total=erle_db(mic[mask], out_aligned[mask]),
        off=replay_off.outcomes,
        on=replay_on.outcomes,
        words=words,
        aec_seconds=aec_seconds,
        audio_seconds=len(mic) / RATE,
    )


def _rate(outcomes: list[ReplyOutcome]) -> float:
    return sum(o.self_interrupted for o in outcomes) / max(1, len(outcomes))


def _p50(values: list[float]) -> str:
    return f"{np.median(values):.0f}" if values else "-"


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.1f}%"


def summarize(results: list[SessionResult]) -> tuple[list[str], list[list[object]], dict[str, float]]:
    header = [
        "echo path (room/delay/level)",
        "replies",
        "ERLE linear dB",
        "ERLE total dB",
        "self-interrupt off",
        "self-interrupt on",
        "false pauses on",
        "stop p50 ms on",
        "missed barge-ins on",
        "WER no echo",
        "WER AEC on",
        "WER AEC off",
    ]

    def row(name: str, rs: list[SessionResult]) -> tuple[list[object], dict[str, float]]:
        off = [o for r in rs for o in r.off]
        on = [o for r in rs for o in r.on]
        lat = [v for o in on if (v := o.stop_latency_ms) is not None]
        barge = [o for o in on if o.user_onset_ms is not None]
        missed = sum(o.paused_ms is None for o in barge)
        wer = {k: word_error_rate([p for r in rs for p in r.words.get(k, [])]) for k in ("clean", "on", "off")}
        figures = {
            "erle_linear": float(np.nanmedian([r.erle_linear for r in rs])),
            "erle_total": float(np.nanmedian([r.erle_total for r in rs])),
            "self_off": _rate(off),
            "self_on": _rate(on),
            "stop_p50": float(np.median(lat)) if lat else float("nan"),
            "wer_clean": wer["clean"],
            "wer_on": wer["on"],
            "wer_off": wer["off"],
        }
        cells: list[object] = [
            name,
            len(on),
            f"{figures['erle_linear']:.1f}",
            f"{figures['erle_total']:.1f}",
            f"{sum(o.self_interrupted for o in off)} ({_pct(figures['self_off'])})",
            f"{sum(o.self_interrupted for o in on)} ({_pct(figures['self_on'])})",
            sum(o.false_pause for o in on),
            _p50(lat),
            f"{missed}/{len(barge)}",
            _pct(wer["clean"]),
            _pct(wer["on"]),
            _pct(wer["off"]),
        ]
        return cells, figures

    rows = [row(r.path.name, [r])[0] for r in results]
    total, figures = row("all (ERLE: median of sessions)", results)
    rows.append(total)
    return header, rows, figures


def main(argv: Sequence[str]) -> int:
    from duplexer.bench.log import add_log_arguments, append_benchmark, format_table, log_path_from_args
    from duplexer.cli_support import fail

    parser = argparse.ArgumentParser(prog="duplexer bench echo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=DEFAULT_REPLIES, help="bot replies in all (default 216)")
    parser.add_argument("--rooms", default=",".join(ROOMS), help=f"rooms, comma-separated ({', '.join(ROOMS)})")
    parser.add_argument("--delays", default=",".join(f"{d:g}" for d in DEFAULT_DELAYS_MS), help="device delays, ms")
    parser.add_argument("--levels", default=",".join(f"{v:g}" for v in DEFAULT_LEVELS_DB), help="echo levels, dB")
    parser.add_argument("--drift-ppm", type=float, default=DEFAULT_DRIFT_PPM, help="device clock drift (ppm)")
    parser.add_argument("--no-wer", action="store_true", help="skip transcription (no Whisper)")
    parser.add_argument("--phrases", type=Path, default=DEFAULT_PHRASES, help="VAP phrases folder (audio/*.wav)")
    parser.add_argument("--seed", type=int, default=0)
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    try:
        rooms = [ROOMS[r.strip()] for r in args.rooms.split(",")]
        delays = [float(d) for d in args.delays.split(",")]
        levels = [float(v) for v in args.levels.split(",")]
    except (KeyError, ValueError) as exc:
        return fail(f"--rooms/--delays/--levels: bad value {exc} (rooms: {', '.join(ROOMS)})")
    if any(not 0 <= d <= 380 for d in delays):
        return fail("--delays must be within 0-380 ms (the canceller searches 400 ms)")
    if args.replies < 1 or not np.isfinite(args.drift_ppm) or abs(args.drift_ppm) > 1000:
        return fail("--replies must be >= 1 and --drift-ppm within +-1000")
    bots = load_clips(args.phrases, ("Wavenet-A", "Wavenet-B"))
    users = load_clips(args.phrases, ("Wavenet-C", "Wavenet-E", "Wavenet-F"))
    if len(bots) < 3 or not users:
        return fail(f"--phrases {args.phrases}: no VAP phrases (audio/*.wav with .txt) there")

    from duplexer.actors.models.silero_vad import SileroVad

    asr = None
    if not args.no_wer:
        from duplexer.actors.models.whisper_asr import WhisperAsr

        asr = WhisperAsr(cpu_threads=1)
    paths = [
        EchoPath(room=room, delay_ms=d, echo_db=v, drift_ppm=args.drift_ppm)
        for room in rooms
        for d in delays
        for v in levels
    ]
    per_session = -(-args.replies // len(paths))
    results = []
    started = time.perf_counter()
    for i, path in enumerate(paths):
        session = build_session(path, bots, users, per_session, seed=args.seed + i)
        results.append(run_session(session, SileroVad, asr, seed=args.seed + i))
        progress(f"echo: {path.name} done ({i + 1}/{len(paths)}, {time.perf_counter() - started:.0f} s)")
    header, rows, figures = summarize(results)
    aec_s = sum(r.aec_seconds for r in results)
    audio_s = sum(r.audio_seconds for r in results)
    rtf = aec_s / audio_s
    notes = [
        f"{len(paths)} sessions ({len(rooms)} rooms x {len(delays)} delays x {len(levels)} echo levels), "
        f"{per_session} replies each, {audio_s:.0f} s of audio; drift {args.drift_ppm:g} ppm; noise 45 dB below "
        "the user; bot: VAP voices A/B, user: C/E/F; every other reply has a barge-in",
        f"canceller real-time factor {rtf:.3f} on one core ({1 / rtf:.0f} sessions per core); "
        f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "ERLE on bot-only frames after the first reply; self-interruption: reply stopped for good "
        "(CancelReply barge_in after min_barge_in_ms) before the user spoke; false pause: playout paused "
        "before the user spoke; stop latency: user onset -> PausePlayout + one 20 ms frame",
        f"targets: total ERLE >= 25 dB ({figures['erle_total']:.1f}); self-interruption with AEC <= 1% "
        f"({_pct(figures['self_on'])}); stop p50 <= 150 ms ({figures['stop_p50']:.0f}); "
        f"WER with AEC within 10 points of no echo ({_pct(figures['wer_on'])} vs {_pct(figures['wer_clean'])})",
    ]
    say("\n".join([format_table(header, rows), "", *notes]))
    append_benchmark(
        "Echo cancellation: a device hearing its own loudspeaker, AEC off and on",
        header,
        rows,
        notes=notes,
        log_path=log_path_from_args(args),
        argv=["bench", "echo", *argv],
    )
    return 0
