"""The wire's echo fields: who cancels a device's echo (config version 2), the playout report, and the codes
that refuse bad values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.protocols.echo_session import SessionEcho
from duplexer.protocols.mqtt_topics import (
    CONFIG_VERSION,
    MAX_PLAYOUT_DELAY_MS,
    AudioFormat,
    ControlType,
    EchoConfig,
    EchoMode,
    ErrorCode,
    WireError,
    pack_audio,
    parse_control,
    parse_device_config,
)
from duplexer.runtime.metrics import Metrics
from tests.conftest import fuzz_settings


def config(**fields: Any) -> bytes:
    return json.dumps({"sample_rate_hz": 16000, **fields}).encode()


def test_a_config_without_echo_fields_leaves_echo_to_the_server() -> None:
    parsed = parse_device_config(config())
    assert parsed.version == 1 and parsed.echo == EchoConfig(EchoMode.SERVER, None)
    assert parse_device_config(config(version=1)).echo.mode is EchoMode.SERVER


@pytest.mark.parametrize(
    ("echo", "expected"),
    [
        ({"mode": "device"}, EchoConfig(EchoMode.DEVICE)),
        ({"mode": "loopback"}, EchoConfig(EchoMode.LOOPBACK)),
        ({"mode": "server", "playout_delay_ms": 120}, EchoConfig(EchoMode.SERVER, 120)),
        ({}, EchoConfig(EchoMode.SERVER)),
    ],
)
def test_version_2_declares_who_cancels_the_echo(echo: dict[str, Any], expected: EchoConfig) -> None:
    parsed = parse_device_config(config(version=2, echo=echo))
    assert parsed.version == CONFIG_VERSION == 2 and parsed.echo == expected


@pytest.mark.parametrize(
    ("fields", "code", "names"),
    [
        ({"echo": {"mode": "device"}}, ErrorCode.BAD_CONFIG, "version"),  # echo is a version-2 field
        ({"version": 1, "echo": {"mode": "device"}}, ErrorCode.BAD_CONFIG, "version"),
        ({"version": 3}, ErrorCode.BAD_CONFIG, "version"),
        ({"version": 0}, ErrorCode.BAD_CONFIG, "version"),
        ({"version": "2"}, ErrorCode.BAD_CONFIG, "version"),
        ({"version": True}, ErrorCode.BAD_CONFIG, "version"),
        ({"version": 2, "echo": "device"}, ErrorCode.BAD_CONFIG, "echo"),
        ({"version": 2, "echo": {"mode": "browser"}}, ErrorCode.BAD_CONFIG, "echo.mode"),
        ({"version": 2, "echo": {"mode": 1}}, ErrorCode.BAD_CONFIG, "echo.mode"),
        ({"version": 2, "echo": {"mode": "server", "delay": 5}}, ErrorCode.BAD_CONFIG, "delay"),
        ({"version": 2, "echo": {"playout_delay_ms": -1}}, ErrorCode.BAD_CONFIG, "playout_delay_ms"),
        ({"version": 2, "echo": {"playout_delay_ms": MAX_PLAYOUT_DELAY_MS + 1}}, ErrorCode.BAD_CONFIG, "playout"),
        ({"version": 2, "echo": {"playout_delay_ms": 12.5}}, ErrorCode.BAD_CONFIG, "playout_delay_ms"),
        ({"version": 2, "echo": {"playout_delay_ms": 1e400}}, ErrorCode.BAD_CONFIG, ""),
    ],
)
def test_bad_echo_fields_are_refused_with_their_code_and_a_message_naming_them(
    fields: dict[str, Any], code: ErrorCode, names: str
) -> None:
    payload = json.dumps({"sample_rate_hz": 16000, **fields}).replace("Infinity", "1e400").encode()
    with pytest.raises(WireError) as refused:
        parse_device_config(payload)
    assert refused.value.code is code
    assert names in refused.value.message and "\n" not in refused.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@fuzz_settings()
@given(
    version=json_values,
    echo=st.dictionaries(st.sampled_from(["mode", "playout_delay_ms", "x"]), json_values, max_size=3) | json_values,
)
def test_any_echo_fields_parse_or_are_refused_with_a_wire_error(version: Any, echo: Any) -> None:
    payload = json.dumps({"sample_rate_hz": 16000, "version": version, "echo": echo}).encode()
    try:
        parsed = parse_device_config(payload)
    except WireError as exc:
        assert exc.code in (ErrorCode.BAD_CONFIG, ErrorCode.MALFORMED_JSON)
    else:
        assert parsed.version == 2 and isinstance(parsed.echo.mode, EchoMode)


def test_a_playout_report_says_which_frame_began_to_play_where_on_the_microphone() -> None:
    control = parse_control(json.dumps({"type": "played", "seq": 41, "mic_seq": 2**32 - 1, "mic_offset": 17}).encode())
    assert control.type is ControlType.PLAYED and control.played == (41, 2**32 - 1, 17)


@pytest.mark.parametrize(
    "fields",
    [
        {"mic_seq": 3, "mic_offset": 0},
        {"seq": -1, "mic_seq": 3, "mic_offset": 0},
        {"seq": 2**32, "mic_seq": 3, "mic_offset": 0},
        {"seq": 1, "mic_seq": True, "mic_offset": 0},
        {"seq": 1, "mic_seq": 3, "mic_offset": 1.5},
        {"seq": 1, "mic_seq": 3, "mic_offset": 10**6},
        {"seq": 1, "mic_seq": 3, "mic_offset": 0, "policy": {}},
    ],
)
def test_a_bad_playout_report_is_refused_as_bad_control(fields: dict[str, Any]) -> None:
    with pytest.raises(WireError) as refused:
        parse_control(json.dumps({"type": "played", **fields}).encode())
    assert refused.value.code is ErrorCode.BAD_CONTROL and "\n" not in refused.value.message


@fuzz_settings()
@given(fields=st.dictionaries(st.sampled_from(["seq", "mic_seq", "mic_offset", "x"]), json_values, max_size=4))
def test_any_playout_report_parses_or_is_refused_as_bad_control(fields: dict[str, Any]) -> None:
    try:
        control = parse_control(json.dumps({"type": "played", **fields}).encode())
    except WireError as exc:
        assert exc.code in (ErrorCode.BAD_CONTROL, ErrorCode.BAD_POLICY)
    else:
        assert control.played is not None and all(isinstance(v, int) for v in control.played)


ECHO_SESSIONS = {mode: SessionEcho(EchoConfig(mode)) for mode in EchoMode}
for _mode, _echo in ECHO_SESSIONS.items():
    _echo.start(AudioFormat(16_000), Metrics())


@fuzz_settings()
@given(
    mode=st.sampled_from(list(EchoMode)),
    payload=st.binary(max_size=700) | st.builds(pack_audio, st.integers(0, 2**32 - 1), st.binary(max_size=700)),
)
def test_any_reference_message_is_taken_or_refused_with_a_wire_error(mode: EchoMode, payload: bytes) -> None:
    try:
        ECHO_SESSIONS[mode].reference_frame(payload, AudioFormat(16_000), 1000.0, None)
    except WireError as exc:
        assert exc.code in (ErrorCode.BAD_CONFIG, ErrorCode.UNKNOWN_FORMAT, ErrorCode.WRONG_FRAME_SIZE)
