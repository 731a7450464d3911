"""Sweeping a turn-taking policy in code: every combination of some parameters over some scenarios.

``duplexer sim --sweep`` writes a CSV and a Pareto plot; a researcher tuning a policy from Python
wants the figures themselves, to plot, filter or feed an optimizer. :func:`sweep` gives them: one
:class:`SweepPoint` per combination, holding the same summary ``duplexer sim`` writes, pooled over
the scenarios, each replayed on the virtual clock (deterministic for its seed).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from duplexer.policies.params import PolicyParams
from duplexer.sims.metrics import summarize, turn_facts
from duplexer.sims.report import MAX_SWEEP_VALUES
from duplexer.sims.scenario import Scenario
from duplexer.sims.simulator import policy_for, simulate

Value = float | int | bool


@dataclass(frozen=True)
class SweepPoint:
    """One combination of the swept parameters and what the scenarios measured with it."""

    values: dict[str, Value]
    """The swept parameters' values at this point."""
    params: PolicyParams
    """The whole policy the scenarios ran with (before each scenario's own overrides)."""
    summary: dict[str, Any]
    """The figures pooled over the scenarios, as in ``summary.json``'s ``aggregate`` (docs/metrics.md)."""

    @property
    def latency_p50_ms(self) -> float | None:
        """Response latency, p50: what the user waits after finishing a turn."""
        value = self.summary["response_latency_ms"]["p50"]
        return None if value is None else float(value)

    @property
    def pause_takeover_rate(self) -> float | None:
        """Share of the turns with a pause that the bot talked into: what a faster policy costs."""
        value = self.summary["pause_takeover_rate"]
        return None if value is None else float(value)


def sweep(
    scenarios: Sequence[Scenario],
    grid: Mapping[str, Sequence[Value]],
    base: PolicyParams | None = None,
    seed: int = 0,
) -> list[SweepPoint]:
    """Replay every scenario under every combination of ``grid`` (parameter name -> values) applied
    to ``base`` (default: the ``live`` preset); one point per combination, in the grid's order.

    Every combination is checked before any runs: an unknown parameter, a value of the wrong type or
    one the policy refuses raises ValueError naming it, as does a grid of more than 1000 points."""
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if len(combos) > MAX_SWEEP_VALUES:
        raise ValueError(f"a sweep of {len(combos)} combinations (at most {MAX_SWEEP_VALUES})")
    start = base or PolicyParams()
    planned = []
    for combo in combos:
        params = start.with_overrides(combo)
        planned.append((combo, params, [(sc, policy_for(sc, params, sc.name)) for sc in scenarios]))
    points = []
    for combo, params, runs in planned:
        facts = [turn_facts(simulate(sc, run_params, seed)) for sc, run_params in runs]
        points.append(SweepPoint(combo, params, summarize(facts, [])))
    return points
