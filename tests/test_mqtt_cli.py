"""`duplexer mqtt`, the example device and `duplexer bench mqtt`, run as a user would run them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from duplexer.bench import mqtt as mqtt_bench
from duplexer.cli import main
from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.runtime.logging import configure_logging
from tests.conftest import REPO
from tests.mqtt_broker import SPEECH_DIR, ensure_mosquitto

SCRIPTED = ["--engines", "scripted"]


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> Iterator[None]:
    """`main` points the structured log at sys.stderr, which capsys closes after the test."""
    yield
    configure_logging(stream=sys.__stderr__)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--broker", "http://h", "--all-devices", *SCRIPTED], "mqtt://host"),
        (["--broker", "mqtt://h:70000", "--all-devices", *SCRIPTED], "port"),
        (["--broker", "mqtt://h", "--device-id", "two words", *SCRIPTED], "--device-id"),
        (["--broker", "mqtt://h", "--device-id", "_bridge", *SCRIPTED], "--device-id"),
        (["--broker", "mqtt://h", "--all-devices", "--prefix", "a/#", *SCRIPTED], "prefix"),
        (["--broker", "mqtt://h", "--all-devices", "--set", "pause_ms=-1", *SCRIPTED], "pause_ms"),
        (["--broker", "mqtt://h", "--all-devices", "--set", "no_such_knob=1", *SCRIPTED], "no_such_knob"),
        (["--broker", "mqtt://h", "--all-devices", "--set", "pause_ms", *SCRIPTED], "KEY=VALUE"),
        (["--broker", "mqtt://h", "--all-devices", "--password", "p", *SCRIPTED], "--username"),
        (["--broker", "mqtt://h", "--all-devices", "--ca-file", "/no/such.pem", *SCRIPTED], "/no/such.pem"),
        (["--broker", "mqtt://h", "--all-devices", "--scripted-lead-silence-ms", "250"], "--engines scripted"),
        (["--broker", "mqtt://h", "--all-devices", "--scripted-lead-silence-ms", "-5", *SCRIPTED], "0-5000"),
        (["--broker", "mqtt://h", "--all-devices", "--device-idle-timeout", "nan", *SCRIPTED], "--device-idle"),
        (["--broker", "mqtt://h", "--all-devices", "--device-idle-timeout", "0", *SCRIPTED], "--device-idle"),
        (["--broker", "mqtt://h", "--all-devices", "--device-rate-limit", "inf", *SCRIPTED], "--device-rate"),
        (["--broker", "mqtt://h", "--all-devices", "--device-rate-limit", "-1", *SCRIPTED], "--device-rate"),
        (["--broker", "mqtt://h", "--all-devices", "--device-tokens", "/no/such.json", *SCRIPTED], "/no/such.json"),
    ],
)
def test_bad_options_exit_2_with_one_line_naming_the_fix(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mqtt", *argv]) == 2
    assert needle in one_line_error(capsys)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("robot1 s3cret", "not valid JSON"),
        ('["robot1"]', "JSON object"),
        ("{}", "JSON object"),
        ('{"two words": "s3cret"}', "not a valid device id"),
        ('{"robot1": 7}', "must be a string"),
        ('{"robot1": " "}', "empty"),
        ('{"robot1": "' + "x" * 300 + '"}', "at most 256"),
        ("[" * 1000 + "]" * 1000, "nested"),
    ],
)
def test_a_bad_device_tokens_file_exits_2_naming_it(
    text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(text)
    assert main(["mqtt", "--broker", "mqtt://h", "--all-devices", "--device-tokens", str(tokens), *SCRIPTED]) == 2
    err = one_line_error(capsys)
    assert needle in err and "tokens.json" in err


def test_a_bad_broker_url_exits_2_without_echoing_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mqtt", "--broker", "mqtt://robot:hunter2@h:70000", "--all-devices", *SCRIPTED]) == 2
    err = one_line_error(capsys)
    assert "hunter2" not in err and "robot:***@h:70000" in err


def test_a_device_id_or_all_devices_is_required() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["mqtt", "--broker", "mqtt://h", *SCRIPTED])
    assert caught.value.code == 2


def test_real_engines_that_cannot_be_imported_exit_2_naming_the_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "duplexer.actors.models.loading", None)  # as if the module were missing
    assert main(["mqtt", "--broker", "mqtt://127.0.0.1:1", "--all-devices", "--engines", "real"]) == 2
    err = one_line_error(capsys)
    assert "duplexer.actors.models.loading" in err and "--engines scripted" in err


def test_a_refused_login_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passwd = shutil.which("mosquitto_passwd")
    assert passwd, "mosquitto_passwd comes with mosquitto"
    password_file = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(password_file), "robot", "s3cret"], check=True, capture_output=True)
    with LoopbackBroker(tmp_path / "broker", binary=ensure_mosquitto(), password_file=password_file) as broker:
        argv = ["mqtt", "--broker", broker.url, "--all-devices", *SCRIPTED, "--username", "robot"]
        assert main([*argv, "--password", "guess", "--log-level", "ERROR"]) == 2
    assert "refused the login" in one_line_error(capsys)


@pytest.mark.slow
def test_the_cli_bridge_and_the_example_device_hold_a_conversation(broker: LoopbackBroker, tmp_path: Path) -> None:
    question = SPEECH_DIR / "basketball_short_female_en-US-Wavenet-E.wav"
    reply = tmp_path / "reply.wav"
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"robot7": "robot7-long-secret"}')
    limits = ["--device-tokens", str(tokens), "--device-idle-timeout", "30", "--device-rate-limit", "200"]
    command = [sys.executable, "-m", "duplexer.cli", "mqtt", "--broker", broker.url, "--device-id", "robot7"]
    bridge = subprocess.Popen(
        [*command, *SCRIPTED, *limits],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        example = subprocess.run(
            [sys.executable, str(REPO / "examples" / "mqtt_device.py"), "--broker", broker.url,
             "--device-id", "robot7", "--input", str(question), "--output", str(reply), "--timeout-s", "20",
             "--token", "robot7-long-secret"],
            capture_output=True,
            text=True,
            timeout=90,
        )  # fmt: skip
    finally:
        bridge.send_signal(signal.SIGINT)
        _, bridge_log = bridge.communicate(timeout=20)
    assert example.returncode == 0, example.stderr
    assert bridge.returncode == 0, bridge_log.decode()[-2000:]
    printed = [line for line in example.stdout.splitlines() if line.startswith("{")]
    assert any('"type": "transcript"' in line for line in printed)
    assert any('"type": "playout_done"' in line for line in printed)
    with wave.open(str(reply), "rb") as wav:
        assert wav.getframerate() == 22_050 and wav.getnchannels() == 1
        assert wav.getnframes() / wav.getframerate() > 3.5  # the scripted echo reply lasts about 4.3 s
    assert b"mqtt_session_started" in bridge_log


def test_the_example_refuses_a_stereo_wav_with_exit_2(tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(bytes(6400))
    example = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mqtt_device.py"), "--broker", "mqtt://127.0.0.1:1",
         "--input", str(stereo), "--output", str(tmp_path / "out.wav")],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert example.returncode == 2 and "mono 16-bit" in example.stderr


@pytest.mark.parametrize("argv", [["--devices", "0"], ["--seconds", "3"], ["--bogus"]])
def test_bench_bad_options_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        mqtt_bench.main(argv)
    assert caught.value.code == 2


@pytest.mark.slow
def test_a_one_device_bench_prints_and_logs_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_mosquitto()
    log = tmp_path / "bench.md"
    assert mqtt_bench.main(["--devices", "1", "--seconds", "12", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "devices sustained in real time: 1" in out
    written = log.read_text()
    assert "duplexer bench mqtt --devices 1" in written
    assert "broker hop p50/p99 ms" in written and "| 1 | yes |" in written
