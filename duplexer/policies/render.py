"""Render the controller's transition table as text, Mermaid or Graphviz, from the table itself."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields

from duplexer.policies.controller import (
    BUILT_IN_TABLE,
    CONTROLLER_INPUTS,
    DEFAULT_PRESET,
    POLICY_PRESETS,
    PRESET_ALIASES,
    PolicyParams,
    PolicyTable,
    preset,
    table_of,
)


def _rows(table: PolicyTable) -> list[tuple[str, str, str, str]]:
    rows = []
    for phase, rules in table.transitions.items():
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
        *(
            [f.name, *(str(getattr(p, f.name, "-")) for p in presets.values())]
            for f in fields(_widest(presets.values()))
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [f"{row[0]:<{widths[0]}}", *(f"{cell:>{w}}" for cell, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  " + "  ".join(cells))
        if i == 0:
            lines.append("  " + "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return lines


def _widest(policies: Iterable[PolicyParams]) -> type[PolicyParams]:
    """The parameter class with the most fields among ``policies`` (a plug-in's adds its own)."""
    classes = [type(p) for p in policies] or [PolicyParams]
    return max(classes, key=lambda cls: len(fields(cls)))


def render_table(name: str | None = None, policy: PolicyParams | None = None) -> str:
    """The table, the timers, and the parameters of every preset side by side (of ``name`` alone when
    given: a preset's name or alias, or with ``policy``, a plug-in's name and its parameters, read
    by its own table)."""
    chosen = policy if policy is not None else (preset(name) if name is not None else None)
    table = table_of(chosen) if chosen is not None else BUILT_IN_TABLE
    rows = [("state", "event", "next state(s)", "rule"), *_rows(table)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, (state, event, target, note) in enumerate(rows):
        lines.append(f"{state:<{widths[0]}}  {event:<{widths[1]}}  {target:<{widths[2]}}  {note}")
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + len("rule")))
    if table is not BUILT_IN_TABLE:
        lines.insert(0, f"transition table {table.name!r}")
    lines += ["", "timers (a tick fires the one that is due):"]
    for phase, timers in table.timers.items():
        lines += [f"  {phase.value}: {timer.name}: {timer.note}" for timer in timers]
    aliases = ", ".join(f"{alias} = {target}" for alias, target in PRESET_ALIASES.items())
    if name is None:
        lines += ["", f"parameters per preset (--policy NAME selects one; {DEFAULT_PRESET} is the default):"]
        lines += parameter_columns(POLICY_PRESETS)
    else:
        assert chosen is not None
        kind = "preset" if table is BUILT_IN_TABLE else "policy"
        lines += ["", f"parameters ({kind} {name}):", *parameter_columns({name: chosen})]
    lines += ["", f"presets: {', '.join(POLICY_PRESETS)} (also: {aliases})"]
    return "\n".join(lines)


def _edges(table: PolicyTable) -> list[tuple[str, str, str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for phase, rules in table.transitions.items():
        for kind, rule in rules.items():
            for target in rule.targets:
                if target is not phase:
                    edges.setdefault((phase.value, target.value), []).append(kind.__name__)
    return [(a, b, " / ".join(names)) for (a, b), names in edges.items()]


def render_mermaid(table: PolicyTable = BUILT_IN_TABLE) -> str:
    lines = ["stateDiagram-v2", "    [*] --> Silence"]
    lines += [f"    {a} --> {b}: {label}" for a, b, label in _edges(table)]
    return "\n".join(lines)


def render_dot(table: PolicyTable = BUILT_IN_TABLE) -> str:
    lines = ["digraph controller {", "    rankdir=LR;", "    node [shape=box, style=rounded];"]
    lines += [f'    "{a}" -> "{b}" [label="{label}"];' for a, b, label in _edges(table)]
    lines.append("}")
    return "\n".join(lines)


def render(fmt: str, name: str | None = None, policy: PolicyParams | None = None) -> str:
    """``table`` shows every preset's parameters (preset ``name``'s alone when given; a ValueError
    names the known ones when there is none); the diagrams are the same for every preset. With
    ``policy`` (a plug-in's, called ``name``), its own table, timers and parameters are drawn."""
    if fmt == "table":
        return render_table(name, policy)
    table = table_of(policy) if policy is not None else BUILT_IN_TABLE
    return {"mermaid": render_mermaid, "dot": render_dot}[fmt](table)
