"""`duplexer bench eot`: how much dead air each end-of-turn detector buys for how few false cut-offs.

The detectors' outputs in every VAP pause are recorded once (:mod:`duplexer.bench.eot_pauses`) and
replayed offline through the controller's own end-of-turn rule
(:meth:`~duplexer.policies.params.PolicyParams.effective_end_of_turn_ms`: the newest estimate sets
the silence to wait; silence is counted there, once). Sweeping the rule's parameters draws, for
silence alone, the text detector, Smart Turn and the two fused, the curve of dead air (silence the
bot waits at true ends) against false cut-offs (mid-turn pauses it takes over). The fusion is fitted
on the calibration voices (A, B, C) and the operating point is chosen there; figures are reported on
the other voices (E, F).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duplexer.actors.turn_fusion import FusionWeights, fit_fusion
from duplexer.bench.eot_pauses import (
    ASK_OFFSETS_MS,
    CACHE_NAME,
    ENDS,
    HESITATIONS_MS,
    KINDS,
    VAD_STOP_LAG_MS,
    VOICES,
    AudioDetector,
    Recording,
    TextDetector,
    Transcriber,
    find_pauses,
    load_cache,
    record_pause,
    save_cache,
)
from duplexer.policies.params import LIVE_CALL_POLICY, PolicyParams

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vap_phrases"
DETECTORS = ("silence", "text", "audio", "audio@stop", "fused", "fused@stop")
"""``@stop``: asked only when the pause starts (and, fused, when the final lands), not as it lengthens."""
NOMINAL_AUDIO_CALL_MS = 60.0
"""Smart Turn's call on one idle core (features ~10 ms, model ~50 ms)."""
NOMINAL_TEXT_READY_MS = 300.0
"""From the VAD's stop to the text detector's answer: Whisper's final on the segment, then SmolLM2."""
MAX_CUTOFF = 0.05
PLOT_NAME = "eot_curve.png"
Schedule = list[tuple[float, float]]
"""(ms after the speech ended when an estimate reaches the controller, its probability)."""


@dataclass(frozen=True)
class Rule:
    """The end-of-turn rule's parameters swept: the waits at p=1, p=0.5 and p=0 (silence alone: one wait)."""

    min_ms: float
    unsure_ms: float
    max_ms: float

    def policy(self, base: PolicyParams = LIVE_CALL_POLICY) -> PolicyParams:
        return dataclasses.replace(
            base,
            end_of_turn_min_ms=self.min_ms,
            end_of_turn_ms=self.unsure_ms
            if self.min_ms == self.max_ms
            else min(max(base.end_of_turn_ms, self.min_ms), self.max_ms),
            end_of_turn_unsure_ms=self.unsure_ms,
            end_of_turn_max_ms=self.max_ms,
            pause_ms=min(base.pause_ms, self.min_ms),
        )


@dataclass(frozen=True)
class Point:
    rule: Rule
    dead_air_ms: float
    """Mean silence the bot waits at true ends (short and long forms)."""
    cutoff: float
    """Share of mid-turn pauses (each modelled hesitation) taken over."""


def schedule(
    rec: Recording, detector: str, weights: FusionWeights, resume_ms: float, measured_timing: bool = False
) -> Schedule:
    """When each of a detector's estimates reaches the controller in this pause, as the actor asks.

    Compute times are nominal (an idle machine) unless ``measured_timing``: then each call's recorded
    wall time, which on a shared machine says more about the load than about the models.
    """
    text_at = VAD_STOP_LAG_MS + (rec.text_ms if measured_timing else NOMINAL_TEXT_READY_MS)
    call_ms = rec.audio_ms if measured_timing else [NOMINAL_AUDIO_CALL_MS] * len(rec.audio_ms)
    asks = [(VAD_STOP_LAG_MS + o, ms, p) for o, ms, p in zip(ASK_OFFSETS_MS, call_ms, rec.p_audio, strict=True)]
    asks = [a for a in asks if a[0] < resume_ms]  # the actor stops asking when the user speaks again
    if detector.endswith("@stop"):
        asks = asks[:1]
        detector = detector.removesuffix("@stop")
    if detector == "silence":
        return []
    if detector == "text":
        return [(text_at, rec.p_text)]
    if detector == "audio":
        return [(at + ms, p) for at, ms, p in asks]
    out = [(at + ms, weights.probability(rec.p_text if text_at <= at else 0.5, p)) for at, ms, p in asks]
    heard = [p for at, _, p in asks if at <= text_at]
    if heard:
        out.append((text_at, weights.probability(rec.p_text, heard[-1])))
    return sorted(out)


def commit_ms(estimates: Schedule, policy: PolicyParams) -> float:
    """Silence after which the controller commits: the first t with t >= its wait for the newest estimate."""
    times = [0.0, *(t for t, _ in estimates), math.inf]
    probabilities: list[float | None] = [None, *(p for _, p in estimates)]
    for i, p in enumerate(probabilities):
        at = max(times[i], policy.effective_end_of_turn_ms(p))
        if at < times[i + 1]:
            return at
    return math.inf


@dataclass
class Replay:
    """Precomputed schedules for one voice set and detector: ends, and (mid pause, hesitation) pairs."""

    ends: list[Schedule]
    mids: list[tuple[Schedule, float]]

    @classmethod
    def of(
        cls, recs: Sequence[Recording], detector: str, weights: FusionWeights, measured_timing: bool = False
    ) -> Replay:
        ends = [schedule(r, detector, weights, math.inf, measured_timing) for r in recs if r.kind in ENDS]
        mids = [
            (schedule(r, detector, weights, h, measured_timing), h)
            for r in recs
            if r.kind == "long_mid"
            for h in HESITATIONS_MS
        ]
        return cls(ends, mids)

    def point(self, rule: Rule) -> Point:
        policy = rule.policy()
        dead = [commit_ms(s, policy) for s in self.ends]
        cut = [commit_ms(s, policy) < h for s, h in self.mids]
        return Point(rule, float(np.mean(dead)) if dead else math.nan, float(np.mean(cut)) if cut else math.nan)


def rules_for(detector: str) -> list[Rule]:
    """The grid swept: one fixed wait for silence alone; (min, default, max) for a detector."""
    if detector == "silence":
        return [Rule(w, w, w) for w in np.arange(100.0, 3001.0, 25.0)]
    rules = []
    for low in np.arange(100.0, 1001.0, 50.0):
        for mid in np.arange(low, 2501.0, 100.0):
            for high in sorted({mid, mid + 500.0, 2000.0, 3000.0, 4000.0}):
                if high >= mid:
                    rules.append(Rule(float(low), float(mid), float(high)))
    return rules


def frontier(points: Sequence[Point]) -> list[Point]:
    """The points no other beats on both dead air and cut-offs, by dead air."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.dead_air_ms, p.cutoff)):
        if not out or p.cutoff < out[-1].cutoff:
            out.append(p)
    return out


def best_within(points: Sequence[Point], max_cutoff: float) -> Point | None:
    ok = [p for p in points if p.cutoff <= max_cutoff + 1e-12]
    return min(ok, key=lambda p: (p.dead_air_ms, p.cutoff)) if ok else None


def fit_samples(recs: Sequence[Recording]) -> tuple[list[float], list[float], list[bool]]:
    """(p_text, p_audio at the pause's start, ended), twice per pause: what the fusion learns from.

    As the fused engine is asked live: at the VAD's stop, before the pause's final, the text side is
    neutral (0.5); once the final lands it has the transcript. The audio is the first ask's only:
    later asks hear more silence, and the silence is the controller's to count.
    """
    pt = [0.5] * len(recs) + [r.p_text for r in recs]
    pa = [r.p_audio[0] for r in recs] * 2
    return pt, pa, [r.ended for r in recs] * 2


def above_half_rates(recs: Sequence[Recording], weights: FusionWeights) -> list[tuple[str, ...]]:
    """Rows: share of pauses of each kind where each detector says p > 0.5."""
    last = len(ASK_OFFSETS_MS) - 1
    late = f"+{ASK_OFFSETS_MS[last]:g} ms"
    readers: list[tuple[str, Callable[[Recording], float]]] = [
        ("text (Whisper's transcript)", lambda r: r.p_text),
        ("audio at the stop", lambda r: r.p_audio[0]),
        (f"audio {late}", lambda r: r.p_audio[last]),
        ("fused: audio at the stop, with the transcript", lambda r: weights.probability(r.p_text, r.p_audio[0])),
        (f"fused: audio {late}, with the transcript", lambda r: weights.probability(r.p_text, r.p_audio[last])),
    ]
    rows = []
    for label, read in readers:
        cells = []
        for kind in KINDS:
            of_kind = [r for r in recs if r.kind == kind]
            cells.append(f"{100.0 * np.mean([read(r) > 0.5 for r in of_kind]):.0f}%" if of_kind else "-")
        rows.append((label, *cells))
    return rows


def load_detectors() -> tuple[AudioDetector, Transcriber, TextDetector]:
    """The project's real engines: Smart Turn, Whisper tiny.en (short window), the SmolLM2 text detector."""
    from duplexer.actors.models.llama_turn_detector import LlamaTurnDetector
    from duplexer.actors.models.smart_turn import SmartTurn
    from duplexer.actors.models.whisper_asr import WhisperAsr

    audio, asr, text = SmartTurn(), WhisperAsr(window="short"), LlamaTurnDetector()
    return audio.probability_of_samples, asr.transcribe_audio, lambda words: text.probability_blocking(words, ())


def record_all(pauses: Sequence, cache: Path, rerecord: bool, progress: bool = True) -> list[Recording]:
    """Recordings of ``pauses``, from the cache where there, else asking the detectors (and caching)."""
    from tqdm import tqdm

    have = {} if rerecord else load_cache(cache)
    missing = [p for p in pauses if p.name not in have]
    if missing:
        audio_p, transcribe, text_p = load_detectors()
        for pause in tqdm(missing, desc="recording pauses", disable=not progress):
            have[pause.name] = record_pause(pause, audio_p, transcribe, text_p)
        save_cache(cache, have.values())
    return [have[p.name] for p in pauses]


def plot(curves: dict[str, list[Point]], chosen: Point | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    for detector, points in curves.items():
        xs = [p.dead_air_ms for p in points]
        ys = [100.0 * p.cutoff for p in points]
        ax.step(xs, ys, where="post", marker="o", markersize=3, label=detector)
    if chosen is not None:
        ax.plot([chosen.dead_air_ms], [100.0 * chosen.cutoff], "k*", markersize=14, label="chosen point")
    ax.axhline(100.0 * MAX_CUTOFF, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("dead air at true ends (mean ms of silence before the bot commits)")
    ax.set_ylabel("mid-turn pauses cut off (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _voices(text: str) -> tuple[str, ...]:
    voices = tuple(v.strip().upper() for v in text.split(",") if v.strip())
    unknown = [v for v in voices if v not in VOICES]
    if not voices or unknown:
        raise argparse.ArgumentTypeError(f"voices are a comma-separated subset of {','.join(VOICES)}, got {text!r}")
    return voices


def build_parser() -> argparse.ArgumentParser:
    from duplexer.bench.log import add_log_arguments

    parser = argparse.ArgumentParser(
        prog="duplexer bench eot",
        description="End-of-turn trade-off on the VAP phrases: records once what Smart Turn (audio), the "
        "SmolLM2 text detector (on Whisper's transcript) and their fusion say in every pause (short-form ends, "
        "long-form mid-turn pauses, long-form ends), fits the fusion on --fit-voices, replays the controller's "
        "end-of-turn rule over a sweep of end_of_turn_min_ms / end_of_turn_ms / end_of_turn_max_ms, and draws "
        "dead air against false cut-offs on --voices for silence alone, text, audio and fused. Prints the "
        "PolicyParams of the point with the least dead air at <= --max-cutoff false cut-offs. The recordings' "
        "own mid-turn gaps are mostly too short for the VAD to stop, so a mid-turn pause is modelled as the "
        "long form cut where the short form ends, then silence until the user goes on after "
        f"{', '.join(f'{h:g}' for h in HESITATIONS_MS)} ms (each counted once). "
        f"Recordings are cached in OUT/{CACHE_NAME}; later runs replay them without loading a model.",
    )
    parser.add_argument(
        "--data", type=Path, metavar="DIR", default=DEFAULT_DATA, help="the vap_phrases folder (audio/, annotation/)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        default=Path("eot-bench"),
        help=f"folder for the recording cache ({CACHE_NAME}) and plot",
    )
    parser.add_argument(
        "--fit-voices",
        type=_voices,
        metavar="V,V",
        default=("A", "B", "C"),
        help="voices to fit the fusion and choose the point on",
    )
    parser.add_argument(
        "--voices", type=_voices, metavar="V,V", default=("E", "F"), help="voices to report on (default E,F)"
    )
    parser.add_argument(
        "--phrase", action="append", metavar="NAME", default=None, help="only this phrase (e.g. basketball); repeatable"
    )
    parser.add_argument(
        "--max-cutoff", type=float, metavar="RATE", default=MAX_CUTOFF, help="false cut-off rate allowed (0.05)"
    )
    parser.add_argument(
        "--measured-timing",
        action="store_true",
        help="replay each call's recorded wall time instead of nominal ones (Smart Turn "
        f"{NOMINAL_AUDIO_CALL_MS:g} ms, text answer {NOMINAL_TEXT_READY_MS:g} ms after the VAD's stop)",
    )
    parser.add_argument("--rerecord", action="store_true", help="ask the models again instead of reading the cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_log_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.bench.eot_report import report
    from duplexer.cli_support import fail

    args = build_parser().parse_args(list(argv))
    if not (args.data / "audio").is_dir():
        return fail(f"{args.data}: no audio/ folder; pass --data DIR (shared/data/vap_phrases)")
    if not 0.0 <= args.max_cutoff < 1.0:
        return fail(f"--max-cutoff must be in [0, 1), got {args.max_cutoff}")
    voices = tuple(dict.fromkeys((*args.fit_voices, *args.voices)))
    pauses = find_pauses(args.data, voices, args.phrase)
    if not pauses:
        return fail(f"no pauses found in {args.data} for voices {','.join(voices)} and phrases {args.phrase}")
    try:
        recs = record_all(pauses, args.out / CACHE_NAME, args.rerecord, progress=not args.no_progress)
    except ModelPackageMissing as exc:
        return fail(str(exc))
    fit_recs = [r for r in recs if r.voice in args.fit_voices]
    report_recs = [r for r in recs if r.voice in args.voices]
    try:
        weights = fit_fusion(*fit_samples(fit_recs))
    except ValueError as exc:
        return fail(f"cannot fit the fusion on voices {','.join(args.fit_voices)}: {exc}")
    return report(args, argv, fit_recs, report_recs, weights)


def copy_plot_beside(plot_path: Path, log_path: Path | None) -> str | None:
    """The plot copied beside the Markdown log, so the log can show it; its relative name."""
    if log_path is None:
        return None
    target = log_path.parent / PLOT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() != plot_path.resolve():
        shutil.copyfile(plot_path, target)
    return target.name
