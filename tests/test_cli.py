"""The command line: reports, determinism, sweeps, and exit code 2 for bad input."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from duplexer.cli import main
from duplexer.runtime.logging import configure_logging
from tests.conftest import SCENARIOS

SUMMARY_KEYS = {
    "response_latency_ms",
    "barge_in_stop_ms",
    "pause_takeover_rate",
    "backchannel_false_stop_rate",
    "speculation",
    "latency_saved_ms",
}


@pytest.fixture(scope="module")
def shipped_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["sim", str(SCENARIOS), "--report", str(out), "--quiet"]) == 0
    return out


def test_sim_writes_summary_and_a_timeline_per_scenario(shipped_report: Path) -> None:
    summary = json.loads((shipped_report / "summary.json").read_text())
    names = {p.stem for p in SCENARIOS.glob("*.yaml")}
    assert set(summary["scenarios"]) == names
    assert {p.stem for p in shipped_report.glob("*.png")} == names
    for block in [*summary["scenarios"].values(), summary["aggregate"]]:
        assert set(block) >= SUMMARY_KEYS
        assert set(block["response_latency_ms"]) == {"p10", "p50", "p90"}
        assert set(block["speculation"]) == {
            "started",
            "committed",
            "discarded",
            "commit_rate",
            "discarded_tokens",
        }
    agg = summary["aggregate"]
    assert agg["speculation"]["started"] > 0 and 0 < agg["speculation"]["commit_rate"] <= 1
    assert agg["latency_saved_ms"]["p50"] > 0  # speculation pays off on the shipped set
    assert agg["backchannel_false_stop_rate"] == 0.0


def test_same_seed_gives_byte_identical_summary(shipped_report: Path, tmp_path: Path) -> None:
    assert main(["sim", str(SCENARIOS), "--report", str(tmp_path), "--quiet", "--no-plots"]) == 0
    assert (tmp_path / "summary.json").read_bytes() == (shipped_report / "summary.json").read_bytes()


def test_set_overrides_reach_the_policy(tmp_path: Path) -> None:
    scenario = SCENARIOS / "plain_single_turn.yaml"
    assert (
        main(
            [
                "sim",
                str(scenario),
                "--report",
                str(tmp_path),
                "--quiet",
                "--no-plots",
                "--set",
                "end_of_turn_ms=1200",
                "--set",
                "end_of_turn_max_ms=2000",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["policy"]["end_of_turn_ms"] == 1200
    assert summary["aggregate"]["response_latency_ms"]["p50"] >= 1200


def test_sweep_writes_csv_and_pareto_plot(tmp_path: Path) -> None:
    args = [
        "sim",
        str(SCENARIOS / "long_pause_mid_turn.yaml"),
        str(SCENARIOS / "plain_two_turns.yaml"),
        "--sweep",
        "pause_ms=150:250:50",
        "--sweep",
        "end_of_turn_ms=400,800",
        "--policy",
        "classic",  # its end_of_turn_min_ms (300) lets end_of_turn_ms go down to 400
        "--report",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 0
    lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert lines[0].startswith("pause_ms,end_of_turn_ms,response_latency_p50_ms")
    assert len(lines) == 1 + 3 * 2
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duplexer.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("name: x\nscript:\n  - say: hi\n    duration_ms: -1\n", "duration_ms"),
        ("name: x\nscript:\n  - yell: hi\n", "unknown event"),
        ("name: x\nscript:\n  - say: hi\n    loud: yes\n", "loud"),
        ("name: x\nscript: [\n", "YAML"),
    ],
)
def test_bad_scenario_exits_2_with_one_line_and_no_report(tmp_path: Path, content: str, field: str) -> None:
    good = tmp_path / "in" / "a_good.yaml"
    good.parent.mkdir()
    shutil.copy(SCENARIOS / "plain_single_turn.yaml", good)
    (tmp_path / "in" / "z_bad.yaml").write_text(content)
    report = tmp_path / "report"
    result = run_cli("sim", str(tmp_path / "in"), "--report", str(report))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "z_bad.yaml" in lines[0] and field in lines[0]
    assert not report.exists()
    assert not list(tmp_path.glob(".duplexer-report-*"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "no_such=1"], "--set no_such"),
        (["--set", "pause_ms=abc"], "pause_ms=abc"),
        (["--set", "pause_ms=5000"], "pause_ms"),
        (["--sweep", "pause_ms=400:100:50"], "--sweep"),
    ],
)
def test_bad_options_exit_2_naming_the_option(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli("sim", str(SCENARIOS / "plain_single_turn.yaml"), "--report", str(tmp_path / "r"), *args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert not (tmp_path / "r").exists()


def test_missing_path_exits_2(tmp_path: Path) -> None:
    result = run_cli("sim", str(tmp_path / "nope"), "--report", str(tmp_path / "r"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_policy_show_and_help_explain() -> None:
    result = run_cli("policy", "show", "--format", "mermaid")
    assert result.returncode == 0 and "stateDiagram-v2" in result.stdout
    helped = run_cli("sim", "--help")
    assert "--sweep" in helped.stdout and "summary.json" in helped.stdout


def test_bench_bus_prints_figures_and_appends_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "figures.md"
    result = run_cli("bench", "bus", "--events", "5000", "--repeats", "1", "--log", str(log), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "publish->deliver p99" in result.stdout and "events/s" in result.stdout
    assert f"duplexer bench bus --events 5000 --repeats 1 --log {log}" in log.read_text()


# ------------------------------------------------------------------ executor options of serve, mqtt and sim

TRANSPORTS = {
    "serve": ["serve", "--engines", "scripted", "--port", "0"],
    "mqtt": ["mqtt", "--broker", "mqtt://127.0.0.1:1883", "--all-devices", "--engines", "scripted"],
}


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """`serve` and `mqtt` point the structured log at sys.stderr, which capsys closes after the test."""
    yield
    configure_logging(stream=sys.__stderr__)


def _closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("command", sorted(TRANSPORTS))
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--executor", "ray", "--share", "llm,gpu"], "--share: unknown engine kind(s) gpu"),
        (["--executor", "ray", "--share", ","], "--share ','"),
        (["--executor", "ray", "--share", "llm", "--llm-gpus", "-1"], "--llm-gpus must be a number >= 0"),
        (["--executor", "ray", "--share", "llm", "--llm-gpus", "nan"], "--llm-gpus must be a number >= 0"),
        (["--executor", "ray", "--share", "tts", "--llm-gpus", "1"], "--llm-gpus applies to a shared LLM"),
        (["--share", "llm"], "--share needs --executor ray"),
        (["--executor", "ray", "--placement", "nonsense"], "--placement 'nonsense': expected HOST=ACTOR"),
        (["--executor", "ray", "--placement", "session=llm,nose"], "--placement 'session=llm,nose' names actors"),
        (["--executor", "ray", "--placement", "session=playout"], "--placement: 'playout' must run in the driver"),
        (["--executor", "ray", "--batch-ms", "-5"], "--batch-ms must be >= 0"),
        (["--executor", "ray", "--ray-address", "headnode"], "--ray-address 'headnode': expected HOST:PORT"),
        (["--executor", "ray", "--sessions-per-host", "0"], "--sessions-per-host must be >= 1"),
        (["--executor", "ray", "--idle-hosts", "-1"], "--idle-hosts must be >= 0"),
    ],
    ids=[
        "unknown-kind",
        "no-kind",
        "negative-gpus",
        "nan-gpus",
        "gpus-without-llm",
        "share-without-ray",
        "bad-placement",
        "placement-unknown-actor",
        "placement-playout",
        "negative-batch",
        "address-without-port",
        "no-sessions-per-host",
        "negative-idle-hosts",
    ],
)
def test_serve_and_mqtt_refuse_bad_executor_options_with_exit_2_and_one_line(
    command: str, args: list[str], needle: str, capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    assert main([*TRANSPORTS[command], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error: ") and "\n" not in err
    assert needle in err


@pytest.mark.parametrize("command", [*sorted(TRANSPORTS), "sim"])
def test_an_unreachable_ray_address_exits_2_within_seconds(
    command: str, capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    argv = TRANSPORTS.get(command, ["sim", str(SCENARIOS / "plain_single_turn.yaml"), "--quiet"])
    started = time.monotonic()
    assert main([*argv, "--executor", "ray", "--ray-address", address]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"duplexer: error: --ray-address {address}: cannot reach a Ray cluster") and "\n" not in err


@pytest.mark.parametrize("command", sorted(TRANSPORTS))
def test_serve_and_mqtt_help_explain_the_executor_and_shared_engines(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        "--executor {local,ray}",
        "--ray-address ADDR",
        "--placement SPEC",
        "--batch-ms MS",
        "--sessions-per-host K",
    ):
        assert words in text
    assert "--share KINDS" in text and "asr, llm, tts" in text
    assert "--llm-gpus N" in text and "GPUs per LLM replica" in text
    assert "--share llm --llm-gpus 1" in text and "docs/deploy.md" in text


@pytest.mark.parametrize(
    "command",
    [
        ["sim", str(SCENARIOS / "plain_single_turn.yaml")],
        ["demo"],
        ["talk", "--mic"],
        TRANSPORTS["serve"],
        TRANSPORTS["mqtt"],
        ["policy", "show"],
    ],
    ids=["sim", "demo", "talk", "serve", "mqtt", "policy-show"],
)
def test_every_policy_command_refuses_an_unknown_preset_with_exit_2_listing_the_names(
    command: list[str], capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    assert main([*command, "--policy", "brisk"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error: --policy") and "\n" not in err
    assert "'brisk'" in err and "live, fast, classic, default" in err


def test_policy_show_prints_a_chosen_preset_and_lists_them_all() -> None:
    from duplexer.policies.controller import LIVE_CALL_POLICY

    shown = run_cli("policy", "show", "--policy", "classic")
    assert shown.returncode == 0 and "parameters (preset classic):" in shown.stdout
    assert ["resume_after_ms", "0.0"] in [line.split() for line in shown.stdout.splitlines()]
    plain = run_cli("policy", "show")
    assert "parameters per preset (--policy NAME selects one; live is the default):" in plain.stdout
    rows = [line.split() for line in plain.stdout.splitlines()]
    assert ["parameter", "live", "fast", "classic"] in rows
    live = str(LIVE_CALL_POLICY.resume_after_ms)
    assert ["resume_after_ms", live, live, "0.0"] in rows
    assert "presets: live, fast, classic (also: default = live)" in plain.stdout


def test_sim_runs_the_chosen_preset_under_its_overrides(tmp_path: Path) -> None:
    from duplexer.policies.controller import CLASSIC_POLICY

    scenario = str(SCENARIOS / "plain_single_turn.yaml")
    args = ["--report", str(tmp_path), "--quiet", "--no-plots", "--policy", "classic", "--set", "min_barge_in_ms=450"]
    assert main(["sim", scenario, *args]) == 0
    policy = json.loads((tmp_path / "summary.json").read_text())["policy"]
    assert policy["resume_after_ms"] == CLASSIC_POLICY.resume_after_ms and policy["min_barge_in_ms"] == 450
    assert policy["backchannel_pause_playout"] is False


def test_sim_runs_the_live_call_policy_by_default(tmp_path: Path) -> None:
    from dataclasses import asdict

    from duplexer.policies.controller import LIVE_CALL_POLICY

    scenario = str(SCENARIOS / "plain_single_turn.yaml")
    assert main(["sim", scenario, "--report", str(tmp_path), "--quiet", "--no-plots"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["policy"] == asdict(LIVE_CALL_POLICY)


def test_a_sweep_over_a_switch_runs_it_off_and_on() -> None:
    from duplexer.sims.report import UsageError, parse_sweep

    assert parse_sweep(["speculation=0,1"]) == {"speculation": [False, True]}
    assert parse_sweep(["backchannel_pause_playout=false,true"]) == {"backchannel_pause_playout": [False, True]}
    with pytest.raises(UsageError, match="speculation takes true/false"):
        parse_sweep(["speculation=0,2"])
