"""duplexer.sweep: a policy's figures over a grid, from Python; a grid it cannot run is refused
before anything runs, with the parameter named."""

from __future__ import annotations

import pytest

import duplexer
from tests.conftest import SCENARIOS


def test_each_point_holds_its_values_its_policy_and_the_figures_of_every_scenario() -> None:
    names = ("plain_single_turn.yaml", "plain_two_turns.yaml")
    scenarios = [duplexer.load_scenario(SCENARIOS / name) for name in names]
    points = duplexer.sweep(scenarios, {"end_of_turn_ms": [600, 900], "speculation": [True]}, seed=1)
    assert [p.values for p in points] == [
        {"end_of_turn_ms": 600, "speculation": True},
        {"end_of_turn_ms": 900, "speculation": True},
    ]
    assert [p.params.end_of_turn_ms for p in points] == [600, 900]
    for point in points:
        assert point.summary["turns"]["answered"] == 3  # one turn of the first scenario, two of the second, pooled
    early, late = (p.latency_p50_ms for p in points)
    assert early is not None and late is not None and late - early == pytest.approx(300, abs=60)
    again = duplexer.sweep(scenarios, {"end_of_turn_ms": [600, 900], "speculation": [True]}, seed=1)
    assert [p.summary for p in again] == [p.summary for p in points]  # deterministic for its seed


@pytest.mark.parametrize(
    ("grid", "named"),
    [
        ({"end_of_turn_mss": [700]}, "end_of_turn_mss"),
        ({"speculation": [1]}, "speculation"),
        ({"end_of_turn_ms": [float("nan")]}, "end_of_turn_ms"),
        ({"pause_ms": [5000]}, "pause_ms"),
        ({"pause_ms": list(range(1, 40)), "end_of_turn_ms": list(range(700, 730))}, "1170 combinations"),
    ],
)
def test_a_grid_it_cannot_run_is_refused_before_any_run(grid: dict[str, list[float]], named: str) -> None:
    scenario = duplexer.load_scenario(SCENARIOS / "plain_single_turn.yaml")
    with pytest.raises(ValueError, match=named):
        duplexer.sweep([scenario], grid)
