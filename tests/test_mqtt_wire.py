"""The MQTT wire contract and inbound audio handling, without a broker: topics, header, JSON, resampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duplexer.kernels.audio import StreamingResampler
from duplexer.protocols.inbound_audio import (
    MAX_LATE_FRAMES,
    RESYNC_LAG_MS,
    InboundAudio,
)
from duplexer.protocols.mqtt_connection import Backoff, broker_settings, redact_url
from duplexer.protocols.mqtt_topics import (
    AUDIO_HEADER_BYTES,
    FLAG_DELAYED,
    SEQ_MODULUS,
    AudioFormat,
    AudioHeader,
    Channel,
    ControlType,
    ErrorCode,
    Topics,
    WireError,
    pack_audio,
    parse_config,
    parse_control,
    parse_status,
    unpack_audio,
)
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ


def tone(rate_hz: int, seconds: float, freq_hz: float = 440.0, amplitude: float = 10_000.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq_hz * np.arange(int(rate_hz * seconds)) / rate_hz) * amplitude


def pcm_of(samples: np.ndarray) -> bytes:
    return np.rint(samples).astype("<i2").tobytes()


# ------------------------------------------------------------------ topics and header


def test_topics_name_every_channel_and_parse_back() -> None:
    topics = Topics("site7")
    assert topics.device("robot1", Channel.AUDIO_IN) == "site7/robot1/audio/in"
    for channel in Channel:
        assert topics.parse(topics.device("r-2.b_3", channel)) == ("r-2.b_3", channel)
    assert topics.parse("site7/_bridge/main/status") is None
    assert topics.parse("other/robot1/events") is None
    assert topics.parse("site7/robot1/audio/sideways") is None
    assert topics.subscriptions(None)[0] == ("site7/+/config", 1)
    assert ("site7/robot1/audio/in", 0) in topics.subscriptions("robot1")
    with pytest.raises(ValueError, match="prefix"):
        Topics("a/+")


def test_audio_header_round_trips_and_wraps_its_sequence() -> None:
    payload = pack_audio(SEQ_MODULUS + 5, b"\x01\x02", FLAG_DELAYED)
    assert len(payload) == AUDIO_HEADER_BYTES + 2
    header, pcm = unpack_audio(payload)
    assert header == AudioHeader(5, FLAG_DELAYED) and pcm == b"\x01\x02"


@pytest.mark.parametrize(
    "payload", [b"", b"DX\x01", b"XX\x01\x00\x00\x00\x00\x00pcm", b"DX\x09\x00\x00\x00\x00\x00pcm"]
)
def test_anything_but_a_headed_frame_is_an_unknown_format(payload: bytes) -> None:
    with pytest.raises(WireError) as caught:
        unpack_audio(payload)
    assert caught.value.code is ErrorCode.UNKNOWN_FORMAT


# ------------------------------------------------------------------ JSON messages


def test_config_declares_the_microphone_format() -> None:
    fmt = parse_config(b'{"sample_rate_hz": 24000, "frame_ms": 20, "encoding": "pcm16le", "channels": 1}')
    assert fmt == AudioFormat(24_000, 20) and fmt.frame_bytes == 960
    assert parse_config(json.dumps(fmt.to_json()).encode()) == fmt


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{nope", ErrorCode.MALFORMED_JSON),
        (b"[1, 2]", ErrorCode.BAD_CONFIG),
        (b'{"sample_rate_hz": 16000, "encoding": "opus"}', ErrorCode.UNKNOWN_FORMAT),
        (b'{"sample_rate_hz": 16000, "channels": 2}', ErrorCode.UNKNOWN_FORMAT),
        (b'{"sample_rate_hz": 96000}', ErrorCode.UNKNOWN_FORMAT),
        (b'{"sample_rate_hz": 22050, "frame_ms": 15}', ErrorCode.BAD_CONFIG),
        (b'{"sample_rate": 16000}', ErrorCode.BAD_CONFIG),
        (b'{"sample_rate_hz": "16000"}', ErrorCode.BAD_CONFIG),
        (b'{"sample_rate_hz": 16000, "pad": "' + b"x" * 20_000 + b'"}', ErrorCode.OVERSIZED),
    ],
)
def test_a_bad_config_is_refused_with_a_code_and_a_fix(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as caught:
        parse_config(payload)
    assert caught.value.code is code
    assert caught.value.message


def test_control_messages_parse_with_their_policy_overrides() -> None:
    assert parse_control(b'{"type": "interrupt"}').type is ControlType.INTERRUPT
    start = parse_control(b'{"type": "start", "policy": {"end_of_turn_ms": 600, "speculation": false}}')
    assert start.type is ControlType.START and start.policy == {"end_of_turn_ms": 600, "speculation": False}
    assert parse_control(b'{"type": "stats"}').policy is None


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"interrupt", ErrorCode.MALFORMED_JSON),
        (b"\xff\xfe", ErrorCode.MALFORMED_JSON),
        (b'"interrupt"', ErrorCode.BAD_CONTROL),
        (b'{"type": "dance"}', ErrorCode.BAD_CONTROL),
        (b'{"kind": "stop"}', ErrorCode.BAD_CONTROL),
        (b'{"type": "stop", "policy": {}}', ErrorCode.BAD_CONTROL),
        (b'{"type": "policy"}', ErrorCode.BAD_CONTROL),
        (b'{"type": "policy", "policy": {"pause_ms": "fast"}}', ErrorCode.BAD_POLICY),
        (b'{"type": "policy", "policy": {"pause_ms": NaN}}', ErrorCode.BAD_POLICY),
    ],
)
def test_a_bad_control_is_refused_with_a_code(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as caught:
        parse_control(payload)
    assert caught.value.code is code


DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"type": "policy", "policy": {"pause_ms": ' + b"9" * 400 + b"}}", ErrorCode.BAD_POLICY),
        (b'{"type": "start", "policy": {"pause_ms": -' + b"9" * 400 + b".5}}", ErrorCode.BAD_POLICY),
        (b'{"type": "policy", "policy": {"pause_ms": 1e400}}', ErrorCode.BAD_POLICY),
        (b'{"type": "policy", "policy": {"pause_ms": Infinity}}', ErrorCode.BAD_POLICY),
        (b'{"type": "policy", "policy": {"' + b"k" * 5000 + b'": 1}}', ErrorCode.BAD_POLICY),
        (b'{"type": "policy", "policy": {"pause_ms": {"deeper": [1]}}}', ErrorCode.BAD_POLICY),
        (b'{"type": "policy", "policy": ' + DEEP + b"}", ErrorCode.MALFORMED_JSON),
        (DEEP, ErrorCode.MALFORMED_JSON),
        (b'{"type": "stop"' + b', "a": [' * 40 + b"]" * 40 + b"}", ErrorCode.MALFORMED_JSON),
    ],
)
def test_huge_numbers_and_deep_nesting_in_a_control_get_their_documented_codes(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as caught:
        parse_control(payload)
    assert caught.value.code is code
    assert len(caught.value.message) < 400  # one readable line, not the payload echoed back


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"sample_rate_hz": ' + b"1" * 400 + b"}", ErrorCode.BAD_CONFIG),
        (b'{"sample_rate_hz": 16000, "frame_ms": 2e400}', ErrorCode.BAD_CONFIG),
        (b'{"sample_rate_hz": 16000.0}', ErrorCode.BAD_CONFIG),
        (b'{"sample_rate_hz": 16000, "frame_ms": true}', ErrorCode.BAD_CONFIG),
        (DEEP, ErrorCode.MALFORMED_JSON),
        (b'{"sample_rate_hz": 16000, "x": ' + DEEP + b"}", ErrorCode.MALFORMED_JSON),
    ],
)
def test_huge_numbers_and_deep_nesting_in_a_config_get_their_documented_codes(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as caught:
        parse_config(payload)
    assert caught.value.code is code


@pytest.mark.parametrize("payload", [b"{" + b'"a": {' * 2000 + b"}" * 2001, b'{"state": ' + b"9" * 400 + b"}"])
def test_a_deep_or_huge_status_is_a_bad_status(payload: bytes) -> None:
    with pytest.raises(WireError) as caught:
        parse_status(payload)
    assert caught.value.code is ErrorCode.BAD_STATUS


def test_a_refusal_names_a_few_unknown_fields_and_never_echoes_the_payload() -> None:
    junk = {f"{i}-" + "x" * 500: 1 for i in range(20)}
    with pytest.raises(WireError) as caught:
        parse_control(json.dumps({"type": "stats", **junk}).encode())
    assert caught.value.code is ErrorCode.BAD_CONTROL
    assert "and 17 more" in caught.value.message and len(caught.value.message) < 300
    with pytest.raises(WireError) as caught:
        parse_control(b'{"type": "policy", "policy": {"\\n": "fast"}}')
    assert caught.value.code is ErrorCode.BAD_POLICY and "\n" not in caught.value.message


def test_status_is_plain_text_or_json() -> None:
    assert parse_status(b"online") == "online"
    assert parse_status(b'{"state": "OFFLINE"}') == "offline"
    with pytest.raises(WireError):
        parse_status(b"asleep")


# ------------------------------------------------------------------ broker settings


def test_broker_url_gives_host_port_tls_and_credentials() -> None:
    plain = broker_settings("mqtt://broker.local")
    assert (plain.host, plain.port, plain.tls) == ("broker.local", 1883, False)
    secure = broker_settings("mqtts://u:p%40ss@10.0.0.2", ca_file=None)
    assert (secure.port, secure.tls, secure.username, secure.password) == (8883, True, "u", "p@ss")
    assert "p@ss" not in repr(secure)
    assert broker_settings("mqtt://h:1884", tls=True).tls


@pytest.mark.parametrize("url", ["http://h", "mqtt://", "mqtt://h:99999", "mqtt://h/topic", "h:1883", "mqtt://h?x=1"])
def test_a_bad_broker_url_names_the_expected_form(url: str) -> None:
    with pytest.raises(ValueError, match="mqtt"):
        broker_settings(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://robot:hunter2@h",
        "mqtt://robot:hunter2@h:99999",
        "mqtt://robot:hunter2@h/topic",
        "mqtt://robot:hunter2@h?x=1",
        "mqtt://robot:p@hunter2@h:99999",
        "mqtt://:hunter2@h:abc",
        "mqtt://robot:hunter2@",
    ],
)
def test_a_bad_broker_url_never_echoes_its_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        broker_settings(url)
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_broker_url_is_redacted_for_messages_and_logs() -> None:
    assert redact_url("mqtt://robot:hunter2@h:1883") == "mqtt://robot:***@h:1883"
    assert redact_url("mqtts://robot:p%40ss@w@h") == "mqtts://robot:***@h"
    assert redact_url("mqtt://robot@h") == "mqtt://robot@h"
    assert redact_url("mqtt://h:1883") == "mqtt://h:1883"
    assert redact_url("no scheme:at:all@x") == "no scheme:at:all@x"


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next_s() for _ in range(6)]
    assert 0.375 <= delays[0] <= 0.625
    assert all(3.0 <= d <= 5.0 for d in delays[3:])
    backoff.reset()
    assert backoff.next_s() <= 0.625


# ------------------------------------------------------------------ resampling


@pytest.mark.parametrize("rate_hz", [8_000, 22_050, 24_000, 44_100, 48_000])
def test_resampling_in_frames_equals_resampling_the_whole_and_keeps_the_tone(rate_hz: int) -> None:
    pcm = pcm_of(tone(rate_hz, 1.0))
    whole = StreamingResampler(rate_hz, INPUT_SAMPLE_RATE_HZ).process(pcm)
    chunked = StreamingResampler(rate_hz, INPUT_SAMPLE_RATE_HZ)
    step = 2 * rate_hz * FRAME_MS // 1000
    assert b"".join(chunked.process(pcm[i : i + step]) for i in range(0, len(pcm), step)) == whole
    out = np.frombuffer(whole, dtype="<i2").astype(np.float64)
    expected = tone(INPUT_SAMPLE_RATE_HZ, 1.0)[: out.size]
    assert abs(out.size - INPUT_SAMPLE_RATE_HZ) <= 64
    assert np.max(np.abs(out[64:-64] - expected[64:-64])) < 20  # within 20 LSB of an ideal 16 kHz tone


def test_resampling_removes_what_16_khz_cannot_carry() -> None:
    high = pcm_of(tone(48_000, 0.5, freq_hz=11_000.0))  # above the 8 kHz Nyquist of the pipeline
    out = np.frombuffer(StreamingResampler(48_000, 16_000).process(high), dtype="<i2").astype(float)
    assert np.sqrt(np.mean(out[100:] ** 2)) < 10_000 * 0.01


# ------------------------------------------------------------------ inbound sequencing

FMT = AudioFormat(24_000, 20)


def frame(value: int = 1000) -> bytes:
    return np.full(FMT.frame_samples, value, dtype="<i2").tobytes()


def push(audio: InboundAudio, seq: int, flags: int = 0, now_ms: float = 0.0) -> list[tuple[int, bytes]]:
    return audio.push(AudioHeader(seq % SEQ_MODULUS, flags), frame(), now_ms)


def test_in_order_frames_become_16_khz_pipeline_frames_numbered_from_the_start_frame() -> None:
    audio = InboundAudio(FMT, start_frame=100)
    out = [f for seq in range(50) for f in push(audio, seq)]
    assert [n for n, _ in out] == list(range(100, 100 + len(out)))
    assert all(len(pcm) == 2 * FRAME_SAMPLES for _, pcm in out)
    assert len(out) in (49, 50)  # the resampler holds back about a millisecond
    assert audio.counts.delivered == 50 and audio.counts.lost == 0


def test_a_reordered_frame_is_put_back_in_place() -> None:
    audio = InboundAudio(FMT, reorder_window_frames=3)
    for seq in (0, 1, 3, 2, 4):
        push(audio, seq)
    assert audio.counts.delivered == 5 and audio.counts.reordered == 1 and audio.counts.lost == 0


def test_a_lost_frame_is_concealed_with_silence_and_counted_and_a_late_one_dropped() -> None:
    audio = InboundAudio(FMT, reorder_window_frames=2)
    out = [f for seq in (0, 1, 3, 4, 5, 6) for f in push(audio, seq)]
    assert audio.counts.lost == 1 and audio.counts.concealed_ms == 20
    push(audio, 2)  # too late: its time was already filled
    assert audio.counts.late == 1
    assert len(out) >= 5  # seven frames of audio time, minus what is still in the resampler


def test_a_missing_frame_stops_holding_back_the_next_once_the_window_has_passed() -> None:
    audio = InboundAudio(FMT, reorder_window_frames=3)
    push(audio, 0, now_ms=0)
    assert push(audio, 2, now_ms=40) == []  # 1 is missing: 2 waits
    assert audio.expire(now_ms=60) == []
    released = audio.expire(now_ms=40 + 4 * 20)
    assert released and audio.counts.lost == 1


def test_a_long_loss_is_skipped_and_audio_time_moves_on() -> None:
    audio = InboundAudio(FMT, reorder_window_frames=0, max_conceal_ms=200)
    push(audio, 0)
    push(audio, 1)
    before = audio.next_frame
    push(audio, 2 + 100)  # 2 s lost
    assert audio.counts.skipped_ms == 2000 and audio.counts.lost == 100
    assert audio.next_frame - before >= 100


def test_delayed_frames_after_an_outage_are_delivered_in_order_and_counted() -> None:
    audio = InboundAudio(FMT)
    for seq in range(10):
        push(audio, seq, now_ms=20.0 * seq)
    for seq in range(10, 110):  # held by the device for 2 s, then sent in a burst
        push(audio, seq, flags=FLAG_DELAYED, now_ms=2300.0)
    assert audio.counts.delayed == 100 and audio.counts.lost == 0 and audio.counts.resyncs == 0
    assert audio.counts.delivered == 110


def test_a_microphone_pause_realigns_audio_time_with_the_clock() -> None:
    audio = InboundAudio(FMT)
    push(audio, 0, now_ms=0.0)
    push(audio, 1, now_ms=5000.0)  # the device paused its microphone for five seconds
    assert audio.counts.resyncs == 1
    assert audio.next_frame * FRAME_MS >= 5000.0 - RESYNC_LAG_MS / 10


def test_a_restarted_sequence_is_a_new_stream_not_a_flood_of_late_frames() -> None:
    audio = InboundAudio(FMT)
    for seq in range(500, 600):
        push(audio, seq)
    push(audio, 0)
    push(audio, 1)
    assert audio.counts.resets == 1 and audio.counts.late == 0
    assert MAX_LATE_FRAMES < 500


def test_the_sequence_wraps_without_loss() -> None:
    audio = InboundAudio(FMT)
    for seq in range(SEQ_MODULUS - 3, SEQ_MODULUS + 3):
        push(audio, seq)
    assert audio.counts.delivered == 6 and audio.counts.lost == 0 and audio.counts.resets == 0


def test_a_frame_of_the_wrong_size_is_refused() -> None:
    audio = InboundAudio(FMT)
    with pytest.raises(WireError) as caught:
        audio.push(AudioHeader(0), bytes(640), 0.0)
    assert caught.value.code is ErrorCode.WRONG_FRAME_SIZE and "960" in caught.value.message
