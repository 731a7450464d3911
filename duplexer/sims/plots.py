"""Timeline and Pareto plots for simulator reports (matplotlib, headless)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from duplexer.runtime.events import CancelReply, CommitReply, StartReply, StateChanged
from duplexer.sims.simulator import SimRun

STATE_COLOURS = {
    "Silence": "#dddddd",
    "UserSpeaking": "#4c72b0",
    "UserPaused": "#8fb0e0",
    "BotReplying": "#55a868",
    "UserOverlap": "#c44e52",
}
STEP_COLOURS = {"say": "#4c72b0", "backchannel": "#dd8452", "noise": "#8c8c8c"}


def plot_timeline(run: SimRun, path: Path) -> None:
    """Lanes for user speech, bot speech and controller state, with speculation markers."""
    end_s = run.duration_ms / 1000.0
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, end_s * 0.6)), 3.2), dpi=100)
    for step in run.steps:
        for start, stop in step.segments:
            ax.broken_barh([(start / 1000, (stop - start) / 1000)], (2.1, 0.8), color=STEP_COLOURS[step.kind])
    for interval in run.bot_audio:
        ax.broken_barh(
            [(interval.start_ms / 1000, (interval.end_ms - interval.start_ms) / 1000)],
            (1.1, 0.8),
            color="#55a868",
        )
    changes = [e for e in run.events if isinstance(e, StateChanged)]
    bounds = [(0.0, "Silence")] + [(e.ts_ms, e.new_state) for e in changes] + [(run.duration_ms, "")]
    for (start, state), (stop, _) in itertools.pairwise(bounds):
        ax.broken_barh([(start / 1000, (stop - start) / 1000)], (0.1, 0.8), color=STATE_COLOURS.get(state, "#fff"))
    spec = {e.reply_id for e in run.events if isinstance(e, StartReply) and e.speculative}
    markers = [
        (StartReply, "^", "#000000", "speculation start"),
        (CancelReply, "x", "#c44e52", "cancel"),
        (CommitReply, "o", "#2ca02c", "commit"),
    ]
    for kind, marker, colour, label in markers:
        xs = [e.ts_ms / 1000 for e in run.events if isinstance(e, kind) and getattr(e, "reply_id", "") in spec]
        if xs:
            ax.scatter(xs, [3.2] * len(xs), marker=marker, color=colour, label=label, zorder=3)
    ax.set_yticks([0.5, 1.5, 2.5, 3.2], ["state", "bot", "user", "speculation"])
    ax.set_ylim(0, 3.6)
    ax.set_xlim(0, end_s)
    ax.set_xlabel("time (s)")
    mode = "speculation on" if run.speculation else "speculation off"
    ax.set_title(f"{run.scenario} ({mode})")
    handles = [matplotlib.patches.Patch(color=c, label=s) for s, c in STATE_COLOURS.items()]
    ax.legend(
        handles=handles + ax.get_legend_handles_labels()[0],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def plot_pareto(rows: list[dict[str, Any]], path: Path, x_key: str, y_key: str) -> None:
    """Pause takeover rate against p50 response latency, one point per parameter setting."""
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    points = [(r[x_key], r[y_key], r) for r in rows if r[x_key] is not None and r[y_key] is not None]
    front = pareto_front([(x, y) for x, y, _ in points])
    for x, y, row in points:
        on_front = (x, y) in front
        ax.scatter(x, y, color="#c44e52" if on_front else "#4c72b0", zorder=3)
        label = ", ".join(f"{k}={v:g}" for k, v in row["params"].items())
        ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if front:
        xs, ys = zip(*sorted(front), strict=True)
        ax.plot(xs, ys, color="#c44e52", linewidth=1, label="Pareto front")
        ax.legend()
    ax.set_xlabel("p50 response latency (ms)")
    ax.set_ylabel("pause takeover rate")
    ax.set_title("Turn-taking trade-off (lower-left is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """Points no other point beats on both coordinates (both minimised)."""
    return {p for p in points if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)}
