"""Full-Duplex-Bench figures written out: the per-task table, CSV, JSON and one summary plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from duplexer.sims.fdb import SampleScore, TaskSummary

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("task", "task"),
    ("samples", "n"),
    ("errors", "bad"),
    ("tor", "TOR"),
    ("latency_s", "latency s"),
    ("latency_p50_s", "p50 s"),
    ("backchannel_per_s", "BC freq /s"),
    ("jsd", "JSD"),
)
"""(TaskSummary field, table heading): the v1 table as FDB's README lays it out, per task."""


def table(summaries: Sequence[TaskSummary]) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    rows = [[h for _, h in TABLE_COLUMNS]]
    rows += [[cell(getattr(s, key)) for key, _ in TABLE_COLUMNS] for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(out_dir: Path, scores: Sequence[SampleScore], summaries: Sequence[TaskSummary]) -> list[Path]:
    """fdb_samples.csv (one row per sample), fdb_tasks.csv, fdb.json (both) and fdb.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "fdb_samples.csv", out_dir / "fdb_tasks.csv", out_dir / "fdb.json", out_dir / "fdb.png"]
    _csv(paths[0], [s.row() for s in scores], [f.name for f in fields(SampleScore)])
    _csv(paths[1], [asdict(s) for s in summaries], [f.name for f in fields(TaskSummary)])
    document = {"tasks": [asdict(s) for s in summaries], "samples": [s.row() for s in scores]}
    paths[2].write_text(json.dumps(document, indent=2) + "\n")
    plot_summary(summaries, paths[3])
    return paths


def _csv(path: Path, rows: list[dict[str, object]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_summary(summaries: Sequence[TaskSummary], path: Path) -> None:
    """TOR per task, and mean latency where the task has one."""
    fig, (ax_tor, ax_lat) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    names = [s.task.replace("_", "\n") for s in summaries]
    tors = [s.tor if s.tor is not None else 0.0 for s in summaries]
    ax_tor.bar(names, tors, color="#4c72b0")
    ax_tor.set_ylim(0, 1.05)
    ax_tor.set_ylabel("TOR (took the turn)")
    for i, s in enumerate(summaries):
        ax_tor.text(i, tors[i] + 0.02, "-" if s.tor is None else f"{s.tor:.2f} (n={s.scored})", ha="center", fontsize=8)
    timed = [s for s in summaries if s.latency_s is not None]
    ax_lat.bar([s.task.replace("_", "\n") for s in timed], [s.latency_s or 0.0 for s in timed], color="#55a868")
    ax_lat.set_ylabel("mean latency, TOR = 1 (s)")
    for i, s in enumerate(timed):
        ax_lat.text(i, (s.latency_s or 0.0) + 0.01, f"{s.latency_s:.2f}", ha="center", fontsize=8)
    if not timed:
        ax_lat.text(0.5, 0.5, "no latency (no sample took the turn)", ha="center", transform=ax_lat.transAxes)
    fig.suptitle("Full-Duplex-Bench v1")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
