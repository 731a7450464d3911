"""`duplexer bench asr`: Whisper's short window against faster-whisper's 30 s window, on real speech.

Every VAP phrase (``../shared/data/vap_phrases/audio/*.wav`` with its reference ``.txt``) is
transcribed with both windows by the same loaded model, one after the other, phrase by phrase, so
machine load affects both alike. Accuracy is measured on normalised words (lower case, hyphens as
spaces, punctuation dropped): the exact-match rate and the word error rate (word edit distance over
reference words). Time is per blocking call, on this process's threads.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from duplexer.kernels.audio import pcm16_to_float
from duplexer.runtime.console import say
from duplexer.sims.word_accuracy import normalize_words, word_edits

DEFAULT_PHRASES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vap_phrases" / "audio"
WINDOWS: tuple[Literal["full"], Literal["short"]] = ("full", "short")


@dataclass
class WindowScore:
    exact: int = 0
    edits: int = 0
    reference_words: int = 0
    seconds: list[float] = field(default_factory=list)
    misses: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, name: str, reference: str, text: str, seconds: float) -> None:
        ref, hyp = normalize_words(reference), normalize_words(text)
        self.exact += ref == hyp
        self.edits += word_edits(ref, hyp)
        self.reference_words += len(ref)
        self.seconds.append(seconds)
        if ref != hyp:
            self.misses.append((name, reference, text))

    @property
    def wer(self) -> float:
        return self.edits / max(1, self.reference_words)


def score_windows(asr: object, phrases: Sequence[Path], windows: Sequence[str] = WINDOWS) -> dict[str, WindowScore]:
    """Transcribe each phrase with each window; ``asr`` is a :class:`~duplexer.actors.models.whisper_asr.WhisperAsr`."""
    from duplexer.protocols.wav import read_wav
    from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

    scores = {w: WindowScore() for w in windows}
    for wav in phrases:
        audio = pcm16_to_float(read_wav(wav, INPUT_SAMPLE_RATE_HZ))
        reference = wav.with_suffix(".txt").read_text().strip()
        for window in windows:
            start = time.perf_counter()
            text = asr.transcribe_audio(audio, window)  # type: ignore[attr-defined]
            scores[window].add(wav.stem, reference, text, time.perf_counter() - start)
    return scores


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: Sequence[str]) -> int:
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.actors.models.whisper_asr import SHORT_WINDOW_PAD_S, WhisperAsr
    from duplexer.bench.log import add_log_arguments, append_benchmark, format_table, log_path_from_args
    from duplexer.cli_support import fail

    parser = argparse.ArgumentParser(
        prog="duplexer bench asr",
        description="Whisper tiny.en on every VAP phrase with the short window (clip + "
        f"{SHORT_WINDOW_PAD_S:g} s) and the 30 s window: exact-match rate, word error rate and time per "
        "call; prints them and appends them to the benchmark log (--log).",
    )
    parser.add_argument("--phrases", type=Path, default=DEFAULT_PHRASES, help="folder of VAP phrase wavs + .txt")
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    phrases = sorted(args.phrases.glob("*.wav"))
    if not phrases:
        return fail(f"{args.phrases}: no .wav phrases there; pass --phrases DIR (shared/data/vap_phrases/audio)")
    try:
        asr = WhisperAsr(window="short")
    except ModelPackageMissing as exc:
        return fail(str(exc))
    load_before = _load_average()
    # One warm-up call per window, not counted: first calls allocate.
    warm = pcm16_to_float(np.zeros(16000, dtype="<i2").tobytes())
    for warm_window in WINDOWS:
        asr.transcribe_audio(warm, warm_window)
    scores = score_windows(asr, phrases)
    load_after = _load_average()

    rows = []
    for window in WINDOWS:
        s = scores[window]
        t = np.array(s.seconds) * 1000.0
        label = "30 s (faster-whisper transcribe)" if window == "full" else f"short (clip + {SHORT_WINDOW_PAD_S:g} s)"
        rows.append(
            (
                label,
                f"{s.exact}/{len(phrases)}",
                f"{100.0 * s.wer:.1f}%",
                f"{t.mean():.0f}",
                f"{np.percentile(t, 50):.0f}",
                f"{np.percentile(t, 90):.0f}",
                f"{t.max():.0f}",
            )
        )
    header = ("window", "exact match", "WER", "mean ms/call", "p50 ms", "p90 ms", "max ms")
    notes = [
        f"{len(phrases)} VAP phrases ({args.phrases.name}/), Whisper tiny.en int8, 2 threads, greedy; "
        "both windows per phrase in turn, after one warm-up call each",
        f"load average (1/5/15 min) before {load_before}, after {load_after}",
    ]
    misses = [
        f"{window} window missed {name}: {reference!r} -> {text!r}"
        for window in WINDOWS
        for name, reference, text in scores[window].misses
    ]
    notes += misses
    say("\n".join([format_table(header, rows), *misses]))
    append_benchmark(
        "ASR: Whisper short window vs 30 s window on the VAP phrases",
        header,
        rows,
        notes=notes,
        log_path=log_path_from_args(args),
        argv=["bench", "asr", *argv],
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
