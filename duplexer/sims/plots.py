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
    """One point per parameter setting, pause takeover rate against p50 response latency, with the
    Pareto front drawn as a step line. Settings that land on the same point share one label, and only
    the front is labelled, so the labels stay readable on a grid of dozens of settings."""
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    points = [(r[x_key], r[y_key], r) for r in rows if r[x_key] is not None and r[y_key] is not None]
    names = list(points[0][2]["params"]) if points else []
    colour_key = names[0] if names else None
    if colour_key is not None:
        values = sorted({row["params"][colour_key] for _, _, row in points})
        cmap = plt.get_cmap("viridis", max(2, len(values)))
        for i, value in enumerate(values):
            xs = [x for x, _, row in points if row["params"][colour_key] == value]
            ys = [y for _, y, row in points if row["params"][colour_key] == value]
            ax.scatter(xs, ys, color=cmap(i), s=36, zorder=3, label=f"{colour_key}={value:g}")
    front = sorted(pareto_front([(x, y) for x, y, _ in points]))
    if front:
        front_xs, front_ys = zip(*front, strict=True)
        ax.plot(
            front_xs, front_ys, drawstyle="steps-post", color="#c44e52", linewidth=1.5, zorder=2, label="Pareto front"
        )
        ax.scatter(front_xs, front_ys, s=110, facecolors="none", edgecolors="#c44e52", linewidths=1.5, zorder=4)
        x_mid = (min(x for x, _, _ in points) + max(x for x, _, _ in points)) / 2
        for n, (x, y) in enumerate(front):
            settings = [row["params"] for px, py, row in points if (px, py) == (x, y)]
            left = x > x_mid
            ax.annotate(
                _settings_label(settings),
                (x, y),
                fontsize=7,
                xytext=(-10 if left else 10, 10 if n % 2 == 0 else -16),
                textcoords="offset points",
                ha="right" if left else "left",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#cccccc", "alpha": 0.9},
            )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("p50 response latency (ms, audible onset - end of turn)")
    ax.set_ylabel("pause takeover rate (turns with a pause the bot talked into)")
    ax.set_title("Turn-taking trade-off: lower-left is better; the front is labelled")
    ax.margins(x=0.08, y=0.14)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _settings_label(settings: list[dict[str, Any]]) -> str:
    """Settings that share a point, as one short label: each parameter with the values it takes."""
    values: dict[str, list[float]] = {}
    for params in settings:
        for key, value in params.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return "\n".join(f"{key}={'/'.join(f'{v:g}' for v in sorted(vs))}" for key, vs in values.items())


def pareto_front(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """Points no other point beats on both coordinates (both minimised)."""
    return {p for p in points if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)}
