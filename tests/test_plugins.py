"""Plug-ins by name: the example package installed as a user would, its policy and engine run by
name, a policy plug-in held to the built-in table's checks, and bad plug-ins refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.actors.plugins import ENGINE_GROUP, POLICY_GROUP, PluginError, engine_plugin, policy_named
from duplexer.cli import main
from duplexer.policies.controller import (
    BUILT_IN_TABLE,
    CONTROLLER_INPUTS,
    TIMERS,
    TRANSITIONS,
    Controller,
    Phase,
    PolicyParams,
    PolicyTable,
    PolicyTableError,
    Rule,
    UndeclaredTarget,
)
from duplexer.runtime.events import VadSpeechStart
from tests.conftest import REPO, SCENARIOS, fuzz_settings

EXAMPLE = REPO / "examples" / "plugin"


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package pip-installed into a folder of its own, as a user installs a plug-in."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(EXAMPLE)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    return target


def duplexer(site: Path, *argv: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "duplexer.cli", *argv], capture_output=True, text=True, env=env, timeout=timeout_s
    )


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------ the installed example


def test_the_installed_example_registers_its_entry_points(example_installed: Path) -> None:
    probe = (
        "from importlib.metadata import entry_points as e; "
        f"print(sorted(p.name for p in e(group={ENGINE_GROUP!r})), sorted(p.name for p in e(group={POLICY_GROUP!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(example_installed)}
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert found.stdout.strip() == "['tts.example-tone'] ['example']"


def test_policy_show_draws_the_plug_ins_own_table_and_parameters(example_installed: Path) -> None:
    shown = duplexer(example_installed, "policy", "show", "--policy", "example")
    assert shown.returncode == 0, shown.stderr
    assert "transition table 'example'" in shown.stdout
    assert "question_end_of_turn_ms after a question" in shown.stdout  # its end-of-turn timer
    assert "question_end_of_turn_ms" in shown.stdout.split("parameters (policy example):")[1]


def _sim(site: Path, policy: str, report: Path, *more: str) -> tuple[list[float], dict[str, Any]]:
    """(each turn's response latency, the policy the report says ran) on fast_engines.yaml: a
    statement ("Translate good morning into Spanish"), then a question ("And into Italian?")."""
    scenario = SCENARIOS / "fast_engines.yaml"
    argv = ["sim", str(scenario), "--policy", policy, "--report", str(report), "--no-plots", "--quiet", *more]
    ran = duplexer(site, *argv)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((report / "summary.json").read_text())
    turns = summary["scenarios"]["fast_engines"]["per_turn"]
    return [turn["response_latency_ms"] for turn in turns], summary["policy"]


def test_sim_runs_the_example_policy_by_name_and_only_its_question_turn_commits_sooner(
    example_installed: Path, tmp_path: Path
) -> None:
    (live_statement, live_question), live_policy = _sim(example_installed, "live", tmp_path / "live")
    (statement, question), example_policy = _sim(example_installed, "example", tmp_path / "example")
    assert example_policy["question_end_of_turn_ms"] == 250.0 and "question_end_of_turn_ms" not in live_policy
    assert live_statement == pytest.approx(700.0, abs=30.0) and live_question == pytest.approx(700.0, abs=30.0)
    assert statement == pytest.approx(live_statement, abs=30.0)  # not a question: the usual wait
    assert question < live_question - 300.0  # 250 ms of silence after "?" instead of 700
    # The plug-in's own parameter takes --set like the built-in ones.
    (_, patient), patient_policy = _sim(
        example_installed, "example", tmp_path / "set", "--set", "question_end_of_turn_ms=500"
    )
    assert patient_policy["question_end_of_turn_ms"] == 500.0
    assert question + 150.0 < patient < live_question - 150.0  # 500 ms: between the 250 ms rule and live's 700


@pytest.mark.slow
def test_mqtt_speaks_through_the_example_tts_by_name(example_installed: Path, broker: object, tmp_path: Path) -> None:
    from tests.mqtt_broker import SPEECH_DIR

    url: str = broker.url  # type: ignore[attr-defined]
    question = SPEECH_DIR / "basketball_short_female_en-US-Wavenet-E.wav"
    reply = tmp_path / "reply.wav"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example_installed), str(REPO)])}
    bridge = subprocess.Popen(
        [sys.executable, "-m", "duplexer.cli", "mqtt", "--broker", url, "--device-id", "robot7",
         "--engines", "scripted", "--tts", "example-tone"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        device = subprocess.run(
            [sys.executable, str(REPO / "examples" / "mqtt_device.py"), "--broker", url, "--device-id", "robot7",
             "--input", str(question), "--output", str(reply), "--timeout-s", "20"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        bridge.send_signal(2)
        _, log = bridge.communicate(timeout=20)
    assert device.returncode == 0, device.stderr + log.decode()[-2000:]
    with wave.open(str(reply), "rb") as wav:
        assert wav.getframerate() == 24_000  # the tone engine's rate; the built-in scripted voice's is 22 050
        assert wav.getnframes() / wav.getframerate() > 1.0


# ------------------------------------------------------------------ the table checks


@given(st.sampled_from(list(Phase)), st.sampled_from(CONTROLLER_INPUTS))
@fuzz_settings()
def test_a_table_that_leaves_any_pair_undeclared_is_refused_naming_it(phase: Phase, kind: type) -> None:
    transitions = {p: dict(rules) for p, rules in TRANSITIONS.items()}
    del transitions[phase][kind]
    with pytest.raises(PolicyTableError) as refused:
        PolicyTable("holey", transitions, TIMERS)
    message = str(refused.value)
    assert f"({phase.value}, {kind.__name__}) undeclared" in message and "\n" not in message


def test_the_built_in_table_passes_the_same_checks() -> None:
    assert BUILT_IN_TABLE.transitions is TRANSITIONS and BUILT_IN_TABLE.timers is TIMERS
    PolicyTable("copy", {p: dict(r) for p, r in TRANSITIONS.items()}, dict(TIMERS))


def test_a_plug_in_rule_that_moves_off_its_declared_targets_is_caught() -> None:
    def rogue(step: object, ev: object) -> None:
        step.goto(Phase.BOT_REPLYING, "rogue")  # type: ignore[attr-defined]

    transitions = {p: dict(rules) for p, rules in TRANSITIONS.items()}
    transitions[Phase.SILENCE][VadSpeechStart] = Rule(rogue, (Phase.USER_SPEAKING,), "rogue")

    class Rogue(PolicyParams):
        table = PolicyTable("rogue", transitions, TIMERS)

    c = Controller("s", Rogue())
    start = VadSpeechStart(session_id="s", ts_ms=0.0, segment_id=1, speech_start_ms=0.0, probability=0.9)
    undeclared = r"moved to BotReplying, a target it does not declare in policy table 'rogue'"
    with pytest.raises(UndeclaredTarget, match=undeclared):
        c.handle(start, 0.0)
    assert Controller("s").handle(start, 0.0)  # the built-in rules are untouched


# ------------------------------------------------------------------ bad plug-ins, one line, exit 2


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding hand-made plug-in distributions, found by importlib.metadata."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("bad_plugin")]:
        del sys.modules[name]


def install(site: Path, module: str, source: str, engines: str = "", policies: str = "") -> None:
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    points = ""
    if engines:
        points += f"[{ENGINE_GROUP}]\n{engines}\n"
    if policies:
        points += f"[{POLICY_GROUP}]\n{policies}\n"
    (info / "entry_points.txt").write_text(points)
    import importlib

    importlib.invalidate_caches()


HOLEY_POLICY = """
    from typing import ClassVar
    from duplexer.policies.params import PolicyParams
    from duplexer.policies.rules import TIMERS, TRANSITIONS
    from duplexer.policies.state import Phase
    from duplexer.policies.table import PolicyTable
    from duplexer.runtime.events import VadSpeechStop

    transitions = {phase: dict(rules) for phase, rules in TRANSITIONS.items()}
    del transitions[Phase.USER_PAUSED][VadSpeechStop]

    class Holey(PolicyParams):
        table: ClassVar = PolicyTable("holey", transitions, TIMERS)

    POLICY = Holey()
"""


def test_a_policy_plug_in_that_leaves_a_pair_undeclared_is_refused_at_load_naming_it(
    plugin_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(plugin_site, "bad_plugin_holey", HOLEY_POLICY, policies="holey = bad_plugin_holey:POLICY")
    scenario = str(SCENARIOS / "plain_single_turn.yaml")
    assert main(["sim", scenario, "--policy", "holey", "--report", str(plugin_site)]) == 2
    err = one_line_error(capsys)
    assert "policy plug-in 'holey'" in err and "(UserPaused, VadSpeechStop) undeclared" in err


@pytest.mark.parametrize(
    ("source", "points", "argv", "needle"),
    [
        ("", "", ["--policy", "nope"], "unknown policy 'nope' (known: live, fast, classic, default"),
        ("raise ImportError('needs libfoo')", "broken = bad_plugin_a:POLICY", ["--policy", "broken"],
         "policy plug-in 'broken' (bad_plugin_a:POLICY) cannot be loaded: ImportError: needs libfoo"),
        ("POLICY = 42", "wrong = bad_plugin_b:POLICY", ["--policy", "wrong"], "is a int, not a duplexer.policies"),
        ("POLICY = 1", "gone = bad_plugin_c:NOT_THERE", ["--policy", "gone"], "AttributeError"),
    ],
)  # fmt: skip
def test_bad_policy_plug_ins_exit_2_in_one_line(
    plugin_site: Path, capsys: pytest.CaptureFixture[str], source: str, points: str, argv: list[str], needle: str
) -> None:
    if points:
        module = points.split("= ")[1].split(":")[0]
        install(plugin_site, module, source, policies=points)
    assert main(["policy", "show", *argv]) == 2
    assert needle in one_line_error(capsys)


@pytest.mark.parametrize(
    ("source", "points", "argv", "needle"),
    [
        ("", "", ["--tts", "nope"], "--tts: unknown tts engine 'nope' (known: piper, silent"),
        ("", "", ["--turn-detector", "nope"], "--turn-detector: unknown turn_detector engine 'nope'"),
        ("raise RuntimeError('no GPU')", "vad.broken = bad_plugin_d:VAD", ["--vad", "broken"],
         "--vad broken (bad_plugin_d:VAD) cannot be loaded: RuntimeError: no GPU"),
        ("VAD = object()", "vad.odd = bad_plugin_e:VAD", ["--vad", "odd"],
         "is a object, not a duplexer.actors.plugins.EnginePlugin"),
        ("from duplexer.actors.builtin_engines import ENERGY_VAD as VAD", "asr.vad = bad_plugin_f:VAD",
         ["--asr", "vad"], "is a vad engine, not a asr engine"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["serve", "mqtt"])
def test_bad_engine_names_and_plug_ins_exit_2_in_one_line(
    plugin_site: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    source: str,
    points: str,
    argv: list[str],
    needle: str,
) -> None:
    if points:
        install(plugin_site, points.split("= ")[1].split(":")[0], source, engines=points)
    base = ["serve", "--port", "0"] if command == "serve" else ["mqtt", "--broker", "mqtt://h", "--all-devices"]
    assert main([*base, "--engines", "scripted", *argv]) == 2
    assert needle in one_line_error(capsys)


def test_an_engine_that_lacks_its_kinds_interface_is_refused_when_built() -> None:
    from duplexer.actors.plugins import EnginePlugin

    with pytest.raises(PluginError, match=r"--tts mute: built a str, which has no synthesize"):
        EnginePlugin("tts", lambda clock: "not an engine").make(None, "mute")  # type: ignore[arg-type]


def test_built_ins_resolve_through_the_same_path() -> None:
    assert engine_plugin("vad", "energy").kind == "vad"
    assert engine_plugin("turn_detector", "none").make(None, "none") is None  # type: ignore[arg-type]
    assert policy_named("classic").resume_after_ms == 0.0


# ------------------------------------------------------------------ --version


def test_version_prints_the_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    from duplexer import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"duplexer {__version__}"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--llm", "nope"], "--llm: unknown llm engine 'nope' (known: local"),
        (["demo", "--asr", "nope"], "--asr: unknown asr engine 'nope' (known: whisper"),
        (["bench", "conversation", "--vad", "nope"], "--vad: unknown vad engine 'nope' (known: silero, energy"),
    ],
)
def test_commands_on_the_real_models_refuse_a_bad_name_before_loading_them(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import duplexer.actors.models.loading as loading

    def no_loading(*_: object) -> None:
        raise AssertionError("models loaded before the names were checked")

    monkeypatch.setattr(loading, "load_models", no_loading)
    assert main(argv) == 2
    assert needle in one_line_error(capsys)
