"""Render the controller's transition table as text, Mermaid or Graphviz, from the table itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from duplexer.policies.controller import (
    CONTROLLER_INPUTS,
    DEFAULT_PRESET,
    POLICY_PRESETS,
    PRESET_ALIASES,
    TIMERS,
    TRANSITIONS,
    PolicyParams,
    preset,
)


def _rows() -> list[tuple[str, str, str, str]]:
    rows = []
    for phase, rules in TRANSITIONS.items():
        for kind in CONTROLLER_INPUTS:
            rule = rules[kind]
            if rule.ignored:
                rows.append((phase.value, kind.__name__, "(ignored)", rule.note))
            else:
                targets = ", ".join(t.value for t in rule.targets) or phase.value
                rows.append((phase.value, kind.__name__, targets, rule.note))
    return rows


def parameter_columns(presets: Mapping[str, PolicyParams]) -> list[str]:
    """Every parameter as a row, with a column of values per preset, so presets compare at a glance."""
    rows = [
        ["parameter", *presets],
        *([f.name, *(str(getattr(p, f.name)) for p in presets.values())] for f in fields(PolicyParams)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [f"{row[0]:<{widths[0]}}", *(f"{cell:>{w}}" for cell, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  " + "  ".join(cells))
        if i == 0:
            lines.append("  " + "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return lines


def render_table(name: str | None = None) -> str:
    """The table, the timers, and the parameters of every preset side by side (of ``name`` alone when
    given: a preset's name or alias)."""
    rows = [("state", "event", "next state(s)", "rule"), *_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, (state, event, target, note) in enumerate(rows):
        lines.append(f"{state:<{widths[0]}}  {event:<{widths[1]}}  {target:<{widths[2]}}  {note}")
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + len("rule")))
    lines += ["", "timers (a tick fires the one that is due):"]
    for phase, timers in TIMERS.items():
        lines += [f"  {phase.value}: {timer.name}: {timer.note}" for timer in timers]
    aliases = ", ".join(f"{alias} = {target}" for alias, target in PRESET_ALIASES.items())
    if name is None:
        lines += ["", f"parameters per preset (--policy NAME selects one; {DEFAULT_PRESET} is the default):"]
        lines += parameter_columns(POLICY_PRESETS)
    else:
        lines += ["", f"parameters (preset {name}):", *parameter_columns({name: preset(name)})]
    lines += ["", f"presets: {', '.join(POLICY_PRESETS)} (also: {aliases})"]
    return "\n".join(lines)


def _edges() -> list[tuple[str, str, str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for phase, rules in TRANSITIONS.items():
        for kind, rule in rules.items():
            for target in rule.targets:
                if target is not phase:
                    edges.setdefault((phase.value, target.value), []).append(kind.__name__)
    return [(a, b, " / ".join(names)) for (a, b), names in edges.items()]


def render_mermaid() -> str:
    lines = ["stateDiagram-v2", "    [*] --> Silence"]
    lines += [f"    {a} --> {b}: {label}" for a, b, label in _edges()]
    return "\n".join(lines)


def render_dot() -> str:
    lines = ["digraph controller {", "    rankdir=LR;", "    node [shape=box, style=rounded];"]
    lines += [f'    "{a}" -> "{b}" [label="{label}"];' for a, b, label in _edges()]
    lines.append("}")
    return "\n".join(lines)


def render(fmt: str, name: str | None = None) -> str:
    """``table`` shows every preset's parameters (preset ``name``'s alone when given; a ValueError
    names the known ones when there is none); the diagrams are the same for every preset."""
    if fmt == "table":
        return render_table(name)
    return {"mermaid": render_mermaid, "dot": render_dot}[fmt]()
