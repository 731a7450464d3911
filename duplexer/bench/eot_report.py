"""The figures of ``duplexer bench eot``: curves, the chosen operating point, the table and the log."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from duplexer.actors.turn_fusion import FUSION_WEIGHTS, FusionWeights
from duplexer.bench.eot import (
    DETECTORS,
    PLOT_NAME,
    Point,
    Replay,
    above_half_rates,
    best_within,
    copy_plot_beside,
    frontier,
    plot,
    rules_for,
)
from duplexer.bench.eot_pauses import ASK_OFFSETS_MS, HESITATIONS_MS, Recording
from duplexer.runtime.console import say


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _row(detector: str, label: str, point: Point | None) -> tuple[str, ...]:
    if point is None:
        return (detector, label, "-", "-", "-", "-", "-")
    r = point.rule
    return (
        detector,
        label,
        f"{point.dead_air_ms:.0f}",
        _pct(point.cutoff),
        f"{r.min_ms:g}",
        f"{r.unsure_ms:g}",
        f"{r.max_ms:g}",
    )


def report(
    args: argparse.Namespace,
    argv: Sequence[str],
    fit_recs: Sequence[Recording],
    report_recs: Sequence[Recording],
    weights: FusionWeights,
) -> int:
    from duplexer.bench.log import append_benchmark, format_table, log_path_from_args

    max_cut = args.max_cutoff
    fit_voices, voices = ",".join(args.fit_voices), ",".join(args.voices)
    curves: dict[str, list[Point]] = {}
    rows = []
    chosen_fused: Point | None = None
    fused_name, fused_fit_air = "fused", float("inf")
    for detector in DETECTORS:
        rules = rules_for(detector)
        on_fit = Replay.of(fit_recs, detector, weights, args.measured_timing)
        on_report = Replay.of(report_recs, detector, weights, args.measured_timing)
        fit_points = [on_fit.point(rule) for rule in rules] if fit_recs else []
        report_points = [on_report.point(rule) for rule in rules]
        curves[detector] = frontier(report_points)
        chosen = best_within(fit_points, max_cut)
        chosen_here = on_report.point(chosen.rule) if chosen is not None else None
        rows.append(_row(detector, f"chosen on {fit_voices}, measured on {voices}", chosen_here))
        rows.append(_row(detector, f"best on {voices} itself", best_within(report_points, max_cut)))
        if detector.startswith("fused") and chosen is not None and chosen.dead_air_ms < fused_fit_air:
            chosen_fused, fused_name, fused_fit_air = chosen_here, detector, chosen.dead_air_ms
    baseline_same = None
    if chosen_fused is not None:
        silence = Replay.of(report_recs, "silence", weights, args.measured_timing)
        baseline_same = best_within([silence.point(r) for r in rules_for("silence")], chosen_fused.cutoff)
        rows.append(_row("silence", f"at the {fused_name} point's cut-off rate on {voices}", baseline_same))

    args.out.mkdir(parents=True, exist_ok=True)
    plot_path = args.out / PLOT_NAME
    plot(curves, chosen_fused, plot_path, f"End of turn on VAP voices {voices} (fusion fitted on {fit_voices})")

    audio_ms = np.array([ms for r in (*fit_recs, *report_recs) for ms in r.audio_ms])
    text_ms = np.array([r.text_ms for r in (*fit_recs, *report_recs)])
    header = ("detector", "point", "dead air ms", "false cut-off", "min ms", "unsure ms", "max ms")
    rates_header = ("p > 0.5 at", "short ends", "long mid-turn pauses", "long ends")
    rates = above_half_rates(report_recs, weights)
    notes = [
        f"pauses: {len(report_recs)} on {voices}, {len(fit_recs)} on {fit_voices}; detectors asked "
        f"{', '.join(f'+{o:g}' for o in ASK_OFFSETS_MS)} ms after the VAD's stop (100 ms after the speech ended); "
        f"mid-turn pauses modelled as hesitations of {', '.join(f'{h:g}' for h in HESITATIONS_MS)} ms, each weighted "
        "alike (the recordings' own gaps are mostly < 100 ms)",
        f"fusion fitted on {fit_voices}: FusionWeights(bias={weights.bias:.3f}, text={weights.text:.3f}, "
        f"audio={weights.audio:.3f}); shipped FUSION_WEIGHTS = {FUSION_WEIGHTS}",
        f"Smart Turn ms per call (features + model, 1 thread): p50 {np.percentile(audio_ms, 50):.0f}, "
        f"p90 {np.percentile(audio_ms, 90):.0f}; Whisper final + text detector p50 {np.percentile(text_ms, 50):.0f} ms "
        "(shared CPU: noisy)",
        f"p > 0.5 rates on {voices}: "
        + "; ".join(f"{row[0]}: {row[1]} / {row[2]} / {row[3]} (short ends / long mids / long ends)" for row in rates),
    ]
    if chosen_fused is not None:
        r = chosen_fused.rule
        notes.append(
            f"chosen ({fused_name}, least dead air at <= {_pct(max_cut)} false cut-offs on {fit_voices}): "
            f"PolicyParams(end_of_turn_min_ms={r.min_ms:g}, end_of_turn_unsure_ms={r.unsure_ms:g}, "
            f"end_of_turn_max_ms={r.max_ms:g}); on {voices}: {chosen_fused.dead_air_ms:.0f} ms dead air, "
            f"{_pct(chosen_fused.cutoff)} cut off"
            + (
                f"; silence alone needs {baseline_same.dead_air_ms:.0f} ms for {_pct(baseline_same.cutoff)}"
                if baseline_same is not None
                else "; silence alone cannot get there in the sweep"
            )
        )
    else:
        notes.append(f"no fused point in the sweep keeps false cut-offs <= {_pct(max_cut)} on {fit_voices}")
    log_path = log_path_from_args(args)
    image = copy_plot_beside(plot_path, log_path)
    if image is not None:
        notes.append(f"curve: ![dead air vs false cut-offs]({image})")
    say(
        "\n".join([format_table(header, rows), "", format_table(rates_header, rates), "", *notes, f"plot: {plot_path}"])
    )
    append_benchmark(
        f"End of turn: dead air vs false cut-offs on VAP voices {voices}",
        header,
        rows,
        notes=notes,
        log_path=log_path,
        argv=["bench", "eot", *argv],
    )
    return 0
