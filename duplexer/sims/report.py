"""`duplexer sim`: replay scenarios, write summary.json and timelines; sweeps: a CSV and a Pareto plot."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from duplexer.policies.controller import PolicyParams
from duplexer.runtime.untrusted import MAX_NUMBER_DIGITS
from duplexer.sims.metrics import TurnFacts, latency_saved, per_turn_rows, summarize, turn_facts
from duplexer.sims.scenario import NO_DETECTOR, Scenario, ScenarioError, collect_scenarios, detector_of, report_name
from duplexer.sims.simulator import SimRun, policy_for, simulate
from duplexer.sims.turn_detector_script import load_text_detector


class UsageError(ValueError):
    """Bad command-line input: the message names the option."""


MAX_SWEEP_VALUES = 1000
"""Most values one --sweep axis may take, and most combinations a grid may have."""


def parse_value(text: str) -> float | int | bool:
    """A number or true/false from the command line; ValueError for anything else, and for a
    number with more than MAX_NUMBER_DIGITS digits (int() of 5000 digits raises, float() gives inf)."""
    if sum(char.isdigit() for char in text) > MAX_NUMBER_DIGITS:
        raise ValueError(f"more than {MAX_NUMBER_DIGITS} digits")
    lowered = text.strip().lower()
    if lowered in {"true", "yes", "on"}:
        return True
    if lowered in {"false", "no", "off"}:
        return False
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_overrides(
    items: Sequence[str], option: str = "--set", policy: PolicyParams | None = None
) -> dict[str, float | int | bool]:
    """``key=value`` pairs naming fields of ``policy``'s parameters (a plug-in's add their own);
    unknown names and bad values are errors."""
    known = set(type(policy or PolicyParams()).field_names())
    out: dict[str, float | int | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"{option} {item[:80]!r}: expected key=value")
        if key not in known:
            raise UsageError(f"{option} {key:.80}: unknown policy parameter (known: {', '.join(sorted(known))})")
        try:
            out[key] = parse_value(value)
        except ValueError:
            raise UsageError(f"{option} {key}={value:.40}: not a number or true/false") from None
    return out


BOOL_PARAMETERS = frozenset(f.name for f in fields(PolicyParams) if str(f.type) == "bool")
"""Policy switches (speculation, ...): a sweep over one runs it off and on."""


def parse_sweep(items: Sequence[str], policy: PolicyParams | None = None) -> dict[str, list[float]]:
    """``key=start:stop:step`` (stop included) or ``key=v1,v2,...``, over ``policy``'s parameters."""
    grid: dict[str, list[float]] = {}
    parse_overrides([item.split("=", 1)[0] + "=0" for item in items], option="--sweep", policy=policy)
    for item in items:
        key, _, spec = item.partition("=")
        try:
            if ":" in spec:
                start, stop, step = (float(parse_value(x)) for x in spec.split(":"))
                if not all(math.isfinite(x) for x in (start, stop, step)) or step <= 0 or stop < start:
                    raise ValueError
                n = round((stop - start) / step) + 1
                if n > MAX_SWEEP_VALUES:
                    raise OverflowError(n)
                values = [round(start + i * step, 6) for i in range(n) if start + i * step <= stop + 1e-9]
            else:
                values = [parse_value(x) for x in spec.split(",")]
        except OverflowError:
            raise UsageError(f"--sweep {item:.80}: more than {MAX_SWEEP_VALUES} values") from None
        except ValueError:
            raise UsageError(
                f"--sweep {item:.80}: expected key=start:stop:step (step > 0, stop >= start) or key=v1,v2"
            ) from None
        if key.strip() in BOOL_PARAMETERS:  # an axis of the sweep's table and plot: 0/1 read as false/true
            if any(v not in (0, 1) for v in values):
                raise UsageError(f"--sweep {item}: {key.strip()} takes true/false (or 0/1)")
            values = [bool(v) for v in values]
        grid[key.strip()] = values
    combinations = math.prod(len(v) for v in grid.values())
    if combinations > MAX_SWEEP_VALUES:
        raise UsageError(f"--sweep: {combinations} combinations (at most {MAX_SWEEP_VALUES})")
    return grid


def make_params(overrides: dict[str, Any], base: PolicyParams | None = None) -> PolicyParams:
    try:
        return (base or PolicyParams()).with_overrides(overrides)
    except ValueError as exc:
        raise UsageError(f"--set: {exc}") from None


@contextmanager
def staged_report(report_dir: Path) -> Iterator[Path]:
    """Write into a temporary folder and move files into ``report_dir`` only if all went well."""
    report_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".duplexer-report-", dir=report_dir.parent))
    try:
        yield stage
        report_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(stage.iterdir()):
            target = report_dir / item.name
            if target.exists():
                target.unlink()
            shutil.move(str(item), target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _prepare(paths: Sequence[Path], base: PolicyParams) -> list[tuple[Scenario, PolicyParams]]:
    loaded = collect_scenarios(list(paths))
    for path, sc in loaded:
        load_text_detector(sc, str(path))  # a model that cannot load is refused before any run
    return [(sc, policy_for(sc, base, str(path))) for path, sc in loaded]


Runner = Callable[[Sequence[tuple[Scenario, PolicyParams]]], list[SimRun]]
"""Runs (scenario, params) jobs and returns their runs in order: on the virtual clock, or in real time."""


def run_scenarios(
    paths: Sequence[Path],
    report_dir: Path,
    seed: int,
    overrides: dict[str, Any],
    plots: bool = True,
    progress: bool = True,
    runner: Runner | None = None,
    policy: PolicyParams | None = None,
) -> dict[str, Any]:
    """Replay every scenario with speculation as configured and with it off; write the report.
    ``policy`` is the preset the overrides apply to (the defaults when None)."""
    base = make_params(overrides, policy)
    prepared = _prepare(paths, base)
    from duplexer.sims.plots import plot_timeline

    per_scenario: dict[str, Any] = {}
    all_facts: list[TurnFacts] = []
    all_saved: list[float] = []
    jobs = [job for sc, params in prepared for job in ((sc, params), (sc, replace(params, speculation=False)))]
    # A scenario with a turn detector plays a third time with silence alone, the figure it is judged against.
    jobs += [(silence_alone(sc), params) for sc, params in prepared if detector_of(sc) is not None]
    if runner is None:
        runs = [
            simulate(sc, params, seed) for sc, params in tqdm(jobs, desc="scenarios", disable=not progress, leave=False)
        ]
    else:
        runs = runner(jobs)
    paired, silence_runs = runs[: 2 * len(prepared)], iter(runs[2 * len(prepared) :])
    with staged_report(report_dir) as stage:
        for (scenario, _), main, baseline in zip(prepared, paired[0::2], paired[1::2], strict=True):
            facts, base_facts = turn_facts(main), turn_facts(baseline)
            saved = latency_saved(facts, base_facts)
            per_scenario[scenario.name] = {
                **summarize([facts], saved),
                "per_turn": per_turn_rows(facts),
            }
            if (name := detector_of(scenario)) is not None:
                silence = turn_facts(next(silence_runs))
                per_scenario[scenario.name]["turn_detector"] = detector_block(name, facts, silence)
            all_facts.append(facts)
            all_saved += saved
            if plots:
                plot_timeline(main, stage / f"{report_name(scenario)}.png")
        summary = {
            "seed": seed,
            "policy": asdict(base),
            "scenarios": dict(sorted(per_scenario.items())),
            "aggregate": summarize(all_facts, all_saved),
        }
        (stage / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def silence_alone(scenario: Scenario) -> Scenario:
    """The same scenario with no turn detector: silence alone ends its turns."""
    return scenario.model_copy(update={"turn_detector": NO_DETECTOR})


def _round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def detector_block(name: str, facts: TurnFacts, silence: TurnFacts) -> dict[str, Any]:
    """The "turn_detector" block: the end-of-turn figures with the detector and with silence alone."""

    def figures(f: TurnFacts) -> dict[str, Any]:
        m = summarize([f], [])
        return {k: m[k] for k in ("end_of_turn_commit_ms", "response_latency_ms", "pause_takeover_rate")}

    return {
        "name": name,
        "estimates": facts.detector_estimates,
        **figures(facts),
        "silence_alone": {
            **figures(silence),
            "per_turn_end_of_turn_commit_ms": [_round_or_none(silence.commit_ms.get(i)) for i in facts.step_of_turn],
        },
    }


def summary_table(summary: dict[str, Any]) -> str:
    header = (
        f"{'scenario':34} {'turns':>5} {'lat p50':>8} {'lat p90':>8} {'stop p50':>8} {'talk-over':>10} "
        f"{'pause TO':>8} {'bc stop':>7} {'spec s/c/d':>10} {'commit':>6} {'saved p50':>9}"
    )
    lines = [header, "-" * len(header)]

    def fmt(v: Any, spec: str = ".0f") -> str:
        return "-" if v is None else format(v, spec)

    rows = [*summary["scenarios"].items(), ("ALL", summary["aggregate"])]
    for name, m in rows:
        spec = m["speculation"]
        lines.append(
            f"{name[:34]:34} {m['turns']['answered']:>5} {fmt(m['response_latency_ms']['p50']):>8} "
            f"{fmt(m['response_latency_ms']['p90']):>8} {fmt(m['barge_in_stop_ms']['p50']):>8} "
            f"{str(m['talk_over']['count']) + '/' + fmt(m['talk_over']['total_ms']):>10} "
            f"{fmt(m['pause_takeover_rate'], '.2f'):>8} {fmt(m['backchannel_false_stop_rate'], '.2f'):>7} "
            f"{spec['started']:>4}/{spec['committed']}/{spec['discarded']:<3} "
            f"{fmt(spec['commit_rate'], '.2f'):>6} {fmt(m['latency_saved_ms']['p50']):>9}"
        )
    tool_rows = [(name, m["tools"]) for name, m in rows if "tools" in m]
    if tool_rows:
        tool_header = (
            f"{'tool calls':34} {'calls':>5} {'failed':>6} {'lat p50':>8} {'hidden':>6} "
            f"{'dead air max':>12} {'side effects run/prevented':>26}"
        )
        lines += ["", tool_header, "-" * len(tool_header)]
        for name, t in tool_rows:
            fx = t["side_effects"]
            prevented = fx["prevented_after_barge_in"] + fx["prevented_other"]
            lines.append(
                f"{name[:34]:34} {t['calls']:>5} {t['failed']:>6} {fmt(t['latency_ms']['p50']):>8} "
                f"{fmt(t['hidden_share'], '.2f'):>6} {fmt(t['dead_air_ms']['max']):>12} "
                f"{str(fx['run']) + '/' + str(prevented):>26}"
            )
    detector_rows = [(name, m["turn_detector"]) for name, m in rows if "turn_detector" in m]
    if detector_rows:
        eot_header = (
            f"{'turn detector':34} {'name':>9} {'estimates':>9} {'commit p50 / silence alone':>26} "
            f"{'pause TO / silence alone':>24}"
        )
        lines += ["", eot_header, "-" * len(eot_header)]
        for name, d in detector_rows:
            alone = d["silence_alone"]
            commits = f"{fmt(d['end_of_turn_commit_ms']['p50'])} / {fmt(alone['end_of_turn_commit_ms']['p50'])}"
            takeovers = f"{fmt(d['pause_takeover_rate'], '.2f')} / {fmt(alone['pause_takeover_rate'], '.2f')}"
            lines.append(f"{name[:34]:34} {d['name']:>9} {d['estimates']:>9} {commits:>26} {takeovers:>24}")
    return "\n".join(lines)


SWEEP_COLUMNS = (
    "response_latency_p50_ms",
    "response_latency_p90_ms",
    "pause_takeover_rate",
    "talk_over_count",
    "talk_over_ms",
    "barge_in_stop_p50_ms",
    "backchannel_false_stop_rate",
    "speculation_commit_rate",
)


def run_sweep(
    paths: Sequence[Path],
    report_dir: Path,
    seed: int,
    overrides: dict[str, Any],
    grid: dict[str, list[float]],
    progress: bool = True,
    policy: PolicyParams | None = None,
) -> list[dict[str, Any]]:
    """Every combination of the swept parameters over all scenarios; CSV plus Pareto plot."""
    from duplexer.sims.plots import plot_pareto

    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    prepared_per_combo = []
    for combo in combos:  # validate every combination before running any
        params = make_params({**overrides, **combo}, policy)
        prepared_per_combo.append((combo, _prepare(paths, params)))
    rows: list[dict[str, Any]] = []
    total = sum(len(p) for _, p in prepared_per_combo)
    with staged_report(report_dir) as stage, tqdm(total=total, desc="sweep", disable=not progress) as bar:
        for combo, prepared in prepared_per_combo:
            facts = []
            for scenario, params in prepared:
                facts.append(turn_facts(simulate(scenario, params, seed)))
                bar.update(1)
            m = summarize(facts, [])
            rows.append(
                {
                    "params": combo,
                    "response_latency_p50_ms": m["response_latency_ms"]["p50"],
                    "response_latency_p90_ms": m["response_latency_ms"]["p90"],
                    "pause_takeover_rate": m["pause_takeover_rate"],
                    "talk_over_count": m["talk_over"]["count"],
                    "talk_over_ms": m["talk_over"]["total_ms"],
                    "barge_in_stop_p50_ms": m["barge_in_stop_ms"]["p50"],
                    "backchannel_false_stop_rate": m["backchannel_false_stop_rate"],
                    "speculation_commit_rate": m["speculation"]["commit_rate"],
                }
            )
        with (stage / "sweep.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow([*grid, *SWEEP_COLUMNS])
            for row in rows:
                writer.writerow([*row["params"].values(), *(row[c] for c in SWEEP_COLUMNS)])
        plot_pareto(rows, stage / "pareto.png", "response_latency_p50_ms", "pause_takeover_rate")
    return rows


__all__ = ["ScenarioError", "UsageError", "run_scenarios", "run_sweep", "summary_table"]
