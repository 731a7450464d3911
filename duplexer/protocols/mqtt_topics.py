"""The MQTT wire contract: topic names, the audio frame header, and the JSON messages.

Everything a device has to get right lives here, without I/O, so the bridge, the
device client, the example and the tests share one definition. docs/mqtt.md
describes the same contract for integrators; keep the two in step.

Topics (``{p}`` is the prefix, ``duplexer`` by default)::

    {p}/{device}/config     device -> bridge  QoS 1, retained  audio format (JSON)
    {p}/{device}/audio/in   device -> bridge  QoS 0            header + PCM16 mono
    {p}/{device}/audio/ref  device -> bridge  QoS 0            header + PCM16 mono: its loopback (config echo mode)
    {p}/{device}/control    device -> bridge  QoS 1            start/stop/interrupt/policy/stats (JSON)
    {p}/{device}/status     device -> bridge  QoS 1, retained  online/offline, the device's last will
    {p}/{device}/audio/out  bridge -> device  QoS 0            header + PCM16 mono at the TTS rate
    {p}/{device}/events     bridge -> device  QoS 1            JSON, one object per message
    {p}/_bridge/{id}/status bridge            QoS 1, retained  online/offline, the bridge's last will
"""

from __future__ import annotations

import enum
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from duplexer.runtime.untrusted import (
    MAX_JSON_DEPTH,
    UntrustedInputError,
    bounded_int,
    bounded_text,
    finite_number,
    load_json,
    nesting_depth,
)

DEFAULT_PREFIX = "duplexer"
BRIDGE_LEVEL = "_bridge"
"""Topic level reserved for bridges; device ids may not start with an underscore."""

QOS_AUDIO = 0
"""Audio is real-time: a late frame is worth less than no frame, and loss is detected by sequence."""
QOS_EVENTS = 1
QOS_CONTROL = 1
QOS_CONFIG = 1
QOS_STATUS = 1

MAX_AUDIO_PAYLOAD_BYTES = 32 * 1024
"""Largest audio/in message accepted: 100 ms of 48 kHz PCM16 is 9,608 bytes with its header."""
MAX_JSON_PAYLOAD_BYTES = 16 * 1024
"""Largest config, control or status message accepted."""
MAX_INBOUND_PACKET_BYTES = 64 * 1024
"""The bridge's MQTT 5 maximum packet size: the broker drops anything larger instead of sending it,
so a megabyte message costs the bridge nothing (messages up to it are refused as ``oversized``)."""
MAX_TOKEN_CHARS = 256
"""Longest device token a config message may carry."""
MAX_POLICY_OVERRIDES = 64
"""Most parameters one control message may set; the policy has about twenty."""
MAX_POLICY_NAME_CHARS = 64
MAX_POLICY_MAGNITUDE = 1e6
"""Largest policy value on the wire (a time in ms of over 16 minutes); the policy checks its own ranges."""

DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

ONLINE = "online"
OFFLINE = "offline"


class Channel(enum.StrEnum):
    """The per-device topic suffixes."""

    CONFIG = "config"
    AUDIO_IN = "audio/in"
    AUDIO_REF = "audio/ref"
    CONTROL = "control"
    STATUS = "status"
    AUDIO_OUT = "audio/out"
    EVENTS = "events"


DEVICE_PUBLISHES: tuple[tuple[Channel, int], ...] = (
    (Channel.CONFIG, QOS_CONFIG),
    (Channel.AUDIO_IN, QOS_AUDIO),
    (Channel.AUDIO_REF, QOS_AUDIO),
    (Channel.CONTROL, QOS_CONTROL),
    (Channel.STATUS, QOS_STATUS),
)
"""What the bridge subscribes to, with the QoS it asks for."""


class ErrorCode(enum.StrEnum):
    """Why a device's message was refused; carried as ``code`` in error events."""

    MALFORMED_JSON = "malformed_json"
    BAD_CONTROL = "bad_control"
    BAD_CONFIG = "bad_config"
    UNKNOWN_FORMAT = "unknown_format"
    WRONG_FRAME_SIZE = "wrong_frame_size"
    UNKNOWN_DEVICE = "unknown_device"
    OVERSIZED = "oversized"
    BAD_DEVICE_ID = "bad_device_id"
    BAD_STATUS = "bad_status"
    BAD_POLICY = "bad_policy"
    SESSION_STOPPED = "session_stopped"
    TOO_MANY_DEVICES = "too_many_devices"
    ENGINE_FAILED = "engine_failed"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    INTERNAL = "internal"


class WireError(ValueError):
    """A message that breaks the contract: a code for machines and one line for people."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ topics


def valid_device_id(device_id: str) -> bool:
    return DEVICE_ID_PATTERN.fullmatch(device_id) is not None


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "+#\0") or self.prefix.startswith("$"):
            raise ValueError(
                f"topic prefix {self.prefix!r} is not usable: it must be non-empty, without + # or a leading $"
            )

    def device(self, device_id: str, channel: Channel) -> str:
        return f"{self.prefix}/{device_id}/{channel.value}"

    def bridge_status(self, bridge_id: str) -> str:
        return f"{self.prefix}/{BRIDGE_LEVEL}/{bridge_id}/status"

    def parse_bridge_status(self, topic: str) -> str | None:
        """The bridge id of a bridge status topic; None for anything else."""
        head, tail = f"{self.prefix}/{BRIDGE_LEVEL}/", "/status"
        if topic.startswith(head) and topic.endswith(tail):
            bridge_id = topic[len(head) : -len(tail)]
            return bridge_id if bridge_id and "/" not in bridge_id else None
        return None

    def subscriptions(self, device_id: str | None) -> list[tuple[str, int]]:
        """Filters the bridge subscribes to: one device's topics, or every device's with ``+``."""
        level = device_id if device_id is not None else "+"
        return [(f"{self.prefix}/{level}/{channel.value}", qos) for channel, qos in DEVICE_PUBLISHES]

    def parse(self, topic: str) -> tuple[str, Channel] | None:
        """The device id and channel of a device topic; None for anything else."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        device_id, _, rest = topic[len(head) :].partition("/")
        if not device_id or device_id == BRIDGE_LEVEL:
            return None
        try:
            return device_id, Channel(rest)
        except ValueError:
            return None


# ------------------------------------------------------------------ audio frames

AUDIO_MAGIC = b"DX"
AUDIO_VERSION = 1
AUDIO_HEADER = struct.Struct("<2sBBI")
"""magic ``DX``, version, flags, sequence number (uint32, little-endian): 8 bytes before the PCM."""
AUDIO_HEADER_BYTES = AUDIO_HEADER.size
SEQ_MODULUS = 1 << 32

FLAG_REPLY_START = 0x01
"""audio/out: the first frame of a reply."""
FLAG_DELAYED = 0x02
"""audio/in: the device held this frame during an outage and sends it late."""


@dataclass(frozen=True)
class AudioHeader:
    seq: int
    flags: int = 0


def pack_audio(seq: int, pcm: bytes, flags: int = 0) -> bytes:
    return AUDIO_HEADER.pack(AUDIO_MAGIC, AUDIO_VERSION, flags, seq % SEQ_MODULUS) + pcm


def unpack_audio(payload: bytes) -> tuple[AudioHeader, bytes]:
    """Split an audio message into header and PCM; raises WireError(UNKNOWN_FORMAT) if it is not one."""
    if len(payload) < AUDIO_HEADER_BYTES:
        raise WireError(
            ErrorCode.UNKNOWN_FORMAT,
            f"audio message of {len(payload)} bytes is shorter than the {AUDIO_HEADER_BYTES}-byte header",
        )
    magic, version, flags, seq = AUDIO_HEADER.unpack_from(payload)
    if magic != AUDIO_MAGIC:
        raise WireError(
            ErrorCode.UNKNOWN_FORMAT,
            f"audio message does not start with the magic {AUDIO_MAGIC!r} (got {magic!r}); "
            "prefix each frame with the 8-byte header described in docs/mqtt.md",
        )
    if version != AUDIO_VERSION:
        raise WireError(
            ErrorCode.UNKNOWN_FORMAT,
            f"audio header version {version} is not supported; this bridge speaks version {AUDIO_VERSION}",
        )
    return AudioHeader(seq, flags), payload[AUDIO_HEADER_BYTES:]


def seq_distance(seq: int, expected: int) -> int:
    """Signed distance from ``expected`` to ``seq`` on the wrapping uint32 sequence."""
    return (seq - expected + SEQ_MODULUS // 2) % SEQ_MODULUS - SEQ_MODULUS // 2


# ------------------------------------------------------------------ JSON messages

ENCODING_PCM16LE = "pcm16le"
MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 48_000
MIN_FRAME_MS = 10
MAX_FRAME_MS = 100


def _check_size(payload: bytes, what: str) -> None:
    if len(payload) > MAX_JSON_PAYLOAD_BYTES:
        raise WireError(
            ErrorCode.OVERSIZED,
            f"{what} message of {len(payload)} bytes exceeds the {MAX_JSON_PAYLOAD_BYTES}-byte limit",
        )


def _well_formed_but_for_numbers(payload: bytes) -> bool:
    """Whether JSON that :func:`load_json` refused is well-formed, so that what it refused was a
    number (too many digits, out of float range, NaN or Infinity): the fault of a field, not of the
    syntax. Numbers are not converted here, and the depth is checked first, so this cannot raise."""
    try:
        text = payload.decode("utf-8")
        if nesting_depth(text) > MAX_JSON_DEPTH:
            return False
        json.loads(text, parse_int=len, parse_float=len, parse_constant=len)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def _json_object(payload: bytes, what: str, code: ErrorCode, number_code: ErrorCode) -> dict[str, Any]:
    """The message as a JSON object, within the limits of :mod:`duplexer.runtime.untrusted`:
    bad syntax or nesting is ``malformed_json``, a refused number is ``number_code``."""
    _check_size(payload, what)
    try:
        value = load_json(payload, f"{what} message", MAX_JSON_PAYLOAD_BYTES)
    except UntrustedInputError as exc:
        refused = number_code if _well_formed_but_for_numbers(payload) else ErrorCode.MALFORMED_JSON
        raise WireError(refused, str(exc)) from None
    if not isinstance(value, dict):
        raise WireError(code, f"{what} message must be a JSON object, got {type(value).__name__}")
    return value


MAX_QUOTED_FIELDS = 3
MAX_QUOTED_CHARS = 40
"""An error names at most this many of the fields it refuses, each cut to this length: it never echoes a payload."""


def _reject_unknown(obj: dict[str, Any], allowed: set[str], what: str, code: ErrorCode) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        shown = ", ".join(repr(name[:MAX_QUOTED_CHARS]) for name in unknown[:MAX_QUOTED_FIELDS])
        more = f" and {len(unknown) - MAX_QUOTED_FIELDS} more" if len(unknown) > MAX_QUOTED_FIELDS else ""
        raise WireError(code, f"{what} has unknown field(s) {shown}{more}; allowed: {sorted(allowed)}")


def _int_field(obj: dict[str, Any], name: str, default: int, low: int, high: int, range_code: ErrorCode) -> int:
    """An integer config field: a wrong type is ``bad_config``, a value outside [low, high] ``range_code``."""
    value = obj.get(name, default)
    field = f"config field {name!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(ErrorCode.BAD_CONFIG, f"{field} must be an integer, got {type(value).__name__}")
    try:
        return bounded_int(value, field, low, high)
    except UntrustedInputError as exc:
        raise WireError(range_code, str(exc)) from None


@dataclass(frozen=True)
class AudioFormat:
    """A device's microphone format, declared in its retained config message."""

    sample_rate_hz: int
    frame_ms: int = 20
    channels: int = 1
    encoding: str = ENCODING_PCM16LE

    @property
    def frame_samples(self) -> int:
        return self.sample_rate_hz * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        return 2 * self.frame_samples * self.channels

    def check_frame(self, pcm: bytes) -> None:
        """Raise WireError(WRONG_FRAME_SIZE) unless ``pcm`` is exactly one frame of this format."""
        if len(pcm) != self.frame_bytes:
            raise WireError(
                ErrorCode.WRONG_FRAME_SIZE,
                f"audio frame has {len(pcm)} PCM bytes; the config declares {self.frame_ms} ms at "
                f"{self.sample_rate_hz} Hz mono PCM16, which is {self.frame_bytes} bytes",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "sample_rate_hz": self.sample_rate_hz,
            "channels": self.channels,
            "frame_ms": self.frame_ms,
        }


CONFIG_VERSION = 2
"""The newest config version this bridge speaks. A config without ``version`` is version 1; a field
is accepted only in a config whose version introduced it (older fields stay valid in newer versions)."""
CONFIG_FIELDS_BY_VERSION: dict[int, frozenset[str]] = {
    1: frozenset({"encoding", "sample_rate_hz", "channels", "frame_ms", "token", "version"}),
    2: frozenset({"encoding", "sample_rate_hz", "channels", "frame_ms", "token", "version", "echo"}),
}
CONFIG_FIELDS = set(CONFIG_FIELDS_BY_VERSION[CONFIG_VERSION])


class EchoMode(enum.StrEnum):
    """Who takes the bot's voice out of the device's microphone (config ``echo.mode``, version 2)."""

    SERVER = "server"
    """The bridge cancels it, with the audio it sent on audio/out as the reference (the default)."""
    DEVICE = "device"
    """The device already cancels its echo: the bridge leaves the microphone as it is."""
    LOOPBACK = "loopback"
    """The bridge cancels it, with the device's own loopback of its speaker sent on audio/ref."""


ECHO_FIELDS = frozenset({"mode", "playout_delay_ms"})
MAX_PLAYOUT_DELAY_MS = 1000
"""Largest playout delay a device may declare: from a frame's arrival on audio/out to its sound at the microphone."""


@dataclass(frozen=True)
class EchoConfig:
    """How a device's echo is handled (config ``echo``, version 2)."""

    mode: EchoMode = EchoMode.SERVER
    playout_delay_ms: int | None = None
    """The device's own estimate of its playout delay: where the bridge starts looking for the echo."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode.value}
        if self.playout_delay_ms is not None:
            out["playout_delay_ms"] = self.playout_delay_ms
        return out


@dataclass(frozen=True)
class DeviceConfig:
    """A config message: the microphone format, the echo handling and, where the bridge asks for one, the token."""

    fmt: AudioFormat
    token: str | None = None
    echo: EchoConfig = EchoConfig()
    version: int = 1


def _config_version(obj: dict[str, Any]) -> int:
    version = obj.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        shown = type(version).__name__
        raise WireError(ErrorCode.BAD_CONFIG, f"config field 'version' must be an integer, got {shown}")
    if not 1 <= version <= CONFIG_VERSION:
        shown = str(version)[:12]
        raise WireError(
            ErrorCode.BAD_CONFIG,
            f"config version {shown} is not supported; this bridge speaks versions 1 to {CONFIG_VERSION}",
        )
    newer = sorted(set(obj) - CONFIG_FIELDS_BY_VERSION[version])
    if newer:
        raise WireError(
            ErrorCode.BAD_CONFIG,
            f'config field(s) {newer} need "version": {CONFIG_VERSION} in the config (see docs/mqtt.md)',
        )
    return version


def _echo_config(value: Any) -> EchoConfig:
    if not isinstance(value, dict):
        raise WireError(
            ErrorCode.BAD_CONFIG,
            f'config field \'echo\' must be an object such as {{"mode": "server"}}, got {type(value).__name__}',
        )
    _reject_unknown(value, set(ECHO_FIELDS), "config field 'echo'", ErrorCode.BAD_CONFIG)
    mode = value.get("mode", EchoMode.SERVER.value)
    try:
        echo_mode = EchoMode(mode if isinstance(mode, str) else "")
    except ValueError:
        shown = repr(mode)[:MAX_QUOTED_CHARS] if isinstance(mode, str) else type(mode).__name__
        raise WireError(
            ErrorCode.BAD_CONFIG, f"config 'echo.mode' {shown} is not one of {[m.value for m in EchoMode]}"
        ) from None
    delay: int | None = None
    if "playout_delay_ms" in value:
        delay = _int_field(value, "playout_delay_ms", 0, 0, MAX_PLAYOUT_DELAY_MS, ErrorCode.BAD_CONFIG)
    return EchoConfig(echo_mode, delay)


def parse_device_config(payload: bytes) -> DeviceConfig:
    """A device's config message with its token; raises WireError naming the field to fix."""
    what = "config"
    obj = _json_object(payload, what, ErrorCode.BAD_CONFIG, ErrorCode.BAD_CONFIG)
    _reject_unknown(obj, CONFIG_FIELDS, what, ErrorCode.BAD_CONFIG)
    version = _config_version(obj)
    echo = _echo_config(obj["echo"]) if "echo" in obj else EchoConfig()
    encoding = obj.get("encoding", ENCODING_PCM16LE)
    if encoding != ENCODING_PCM16LE:
        shown = repr(encoding)[:40] if isinstance(encoding, str) else type(encoding).__name__
        raise WireError(
            ErrorCode.UNKNOWN_FORMAT,
            f"audio encoding {shown} is not supported; send {ENCODING_PCM16LE!r} (PCM16 little-endian)",
        )
    channels = _int_field(obj, "channels", 1, 1, 1, ErrorCode.UNKNOWN_FORMAT)
    if "sample_rate_hz" not in obj:
        raise WireError(ErrorCode.BAD_CONFIG, "config needs 'sample_rate_hz', e.g. 16000")
    rate = _int_field(obj, "sample_rate_hz", 0, MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ, ErrorCode.UNKNOWN_FORMAT)
    frame_ms = _int_field(obj, "frame_ms", 20, MIN_FRAME_MS, MAX_FRAME_MS, ErrorCode.BAD_CONFIG)
    if rate * frame_ms % 1000:
        raise WireError(
            ErrorCode.BAD_CONFIG,
            f"frame_ms {frame_ms} must be within {MIN_FRAME_MS}..{MAX_FRAME_MS} and give a whole number "
            f"of samples at {rate} Hz",
        )
    token = obj.get("token")
    if token is not None:
        try:
            token = bounded_text(token, "config field 'token'", MAX_TOKEN_CHARS)
        except UntrustedInputError as exc:
            raise WireError(ErrorCode.BAD_CONFIG, str(exc)) from None
    fmt = AudioFormat(sample_rate_hz=rate, frame_ms=frame_ms, channels=channels, encoding=encoding)
    return DeviceConfig(fmt, token, echo, version)


def parse_config(payload: bytes) -> AudioFormat:
    """A device's config message (its format only); raises WireError naming the field to fix."""
    return parse_device_config(payload).fmt


class ControlType(enum.StrEnum):
    START = "start"
    STOP = "stop"
    INTERRUPT = "interrupt"
    POLICY = "policy"
    STATS = "stats"
    PLAYED = "played"
    """An echo playout report: audio/out frame ``seq`` began to play at sample ``mic_offset`` of audio/in
    frame ``mic_seq`` (the microphone's clock), so the bridge's echo reference is placed where it played."""


PLAYED_FIELDS = ("seq", "mic_seq", "mic_offset")
MAX_MIC_OFFSET = MAX_SAMPLE_RATE_HZ * MAX_FRAME_MS // 1000


PolicyOverrides = dict[str, float | int | bool]


@dataclass(frozen=True)
class Control:
    """One control message: its type and, for start and policy, policy parameter overrides."""

    type: ControlType
    policy: PolicyOverrides | None = None
    played: tuple[int, int, int] | None = None
    """For ``played``: (audio/out seq, audio/in seq, sample offset in that microphone frame)."""


def _overrides(value: Any) -> PolicyOverrides:
    """Policy overrides within the wire's limits (names and magnitudes); the policy checks the rest."""
    if not isinstance(value, dict):
        raise WireError(
            ErrorCode.BAD_POLICY,
            "'policy' must be an object of parameter names to finite numbers or booleans, "
            'e.g. {"end_of_turn_ms": 900}',
        )
    if len(value) > MAX_POLICY_OVERRIDES:
        raise WireError(ErrorCode.BAD_POLICY, f"'policy' sets {len(value)} parameters (at most {MAX_POLICY_OVERRIDES})")
    overrides: PolicyOverrides = {}
    try:
        for name, item in value.items():
            bounded_text(name, "a policy parameter name", MAX_POLICY_NAME_CHARS)
            if not isinstance(item, bool):
                finite_number(item, f"policy parameter {name!r}", -MAX_POLICY_MAGNITUDE, MAX_POLICY_MAGNITUDE)
            overrides[name] = item
    except UntrustedInputError as exc:
        raise WireError(ErrorCode.BAD_POLICY, f"{exc}; policy values are finite numbers or booleans") from None
    return overrides


def parse_control(payload: bytes) -> Control:
    """A device's control message; raises WireError naming what to fix."""
    what = "control"
    obj = _json_object(payload, what, ErrorCode.BAD_CONTROL, ErrorCode.BAD_POLICY)
    kind = obj.get("type")
    try:
        control_type = ControlType(kind if isinstance(kind, str) else "")
    except ValueError:
        shown = repr(kind)[:40] if isinstance(kind, str) else type(kind).__name__
        raise WireError(
            ErrorCode.BAD_CONTROL,
            f"control 'type' {shown} is not one of {[t.value for t in ControlType]}",
        ) from None
    allowed = {"type", "policy"} if control_type in (ControlType.START, ControlType.POLICY) else {"type"}
    if control_type is ControlType.PLAYED:
        allowed = {"type", *PLAYED_FIELDS}
    _reject_unknown(obj, allowed, f"control {control_type.value!r}", ErrorCode.BAD_CONTROL)
    if control_type is ControlType.PLAYED:
        return Control(control_type, played=_played(obj))
    policy = obj.get("policy")
    if control_type is ControlType.POLICY and policy is None:
        raise WireError(ErrorCode.BAD_CONTROL, "control 'policy' needs a 'policy' object of overrides")
    return Control(control_type, None if policy is None else _overrides(policy))


def _played(obj: dict[str, Any]) -> tuple[int, int, int]:
    values = []
    for name, high in zip(PLAYED_FIELDS, (SEQ_MODULUS - 1, SEQ_MODULUS - 1, MAX_MIC_OFFSET), strict=True):
        value = obj.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            shown = repr(value)[:MAX_QUOTED_CHARS] if isinstance(value, int) else type(value).__name__
            raise WireError(
                ErrorCode.BAD_CONTROL, f"control 'played' needs {name!r}, an integer from 0 to {high} (got {shown})"
            )
        values.append(value)
    return values[0], values[1], values[2]


def parse_status(payload: bytes) -> str:
    """``online`` or ``offline``, sent as plain text or as ``{"state": ...}``."""
    _check_size(payload, "status")
    text = payload.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            value = load_json(text, "status message", MAX_JSON_PAYLOAD_BYTES)
        except UntrustedInputError as exc:
            raise WireError(ErrorCode.BAD_STATUS, str(exc)) from None
        state = value.get("state") if isinstance(value, dict) else None
        text = state if isinstance(state, str) else ""
    state = text.lower()
    if state not in (ONLINE, OFFLINE):
        raise WireError(ErrorCode.BAD_STATUS, f"status must be {ONLINE!r} or {OFFLINE!r}, got {text[:40]!r}")
    return state


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
