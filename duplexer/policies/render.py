"""Render the controller's transition table as text, Mermaid or Graphviz, from the table itself."""

from __future__ import annotations

from dataclasses import fields

from duplexer.policies.controller import CONTROLLER_INPUTS, POLICY_PRESETS, TIMERS, TRANSITIONS, PolicyParams


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


def render_table(params: PolicyParams | None = None, name: str | None = None) -> str:
    """The table, the timers, and the parameters of ``params`` (the defaults when None)."""
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
    shown = params or PolicyParams()
    lines += ["", "parameters (defaults):" if name is None else f"parameters (preset {name}):"]
    for f in fields(PolicyParams):
        lines.append(f"  {f.name} = {getattr(shown, f.name)}")
    lines += ["", f"presets (select with --policy NAME): {', '.join(POLICY_PRESETS)}"]
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


def render(fmt: str, params: PolicyParams | None = None, name: str | None = None) -> str:
    """``table`` shows ``params`` (the defaults when None); the diagrams are the same for every preset."""
    if fmt == "table":
        return render_table(params, name)
    return {"mermaid": render_mermaid, "dot": render_dot}[fmt]()
