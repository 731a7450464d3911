"""`duplexer mqtt`: bridge an MQTT broker to duplexer sessions, one per device (robots, IoT)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
from pathlib import Path
from typing import Any

from duplexer.actors.engine_choice import add_engine_arguments
from duplexer.cli_support import add_policy_argument, chosen_policy, fail
from duplexer.protocols.executor_cli import add_transport_executor_arguments
from duplexer.protocols.mqtt_guard import (
    DEFAULT_DEVICE_BURST_MESSAGES,
    DEFAULT_DEVICE_IDLE_TIMEOUT_S,
    DEFAULT_DEVICE_MESSAGES_PER_S,
    load_device_tokens,
)
from duplexer.protocols.observability_cli import add_observability_arguments

PASSWORD_ENV = "DUPLEXER_MQTT_PASSWORD"
IDLE_TIMEOUT_RANGE_S = (1.0, 86_400.0)
RATE_LIMIT_RANGE_PER_S = (1.0, 100_000.0)


def _in_range(value: float, option: str, bounds: tuple[float, float], unit: str) -> str | None:
    """None when ``value`` is finite and within ``bounds``; else the one-line error for ``option``."""
    low, high = bounds
    if math.isfinite(value) and low <= value <= high:
        return None
    return f"{option} must be a number of {unit} from {low:g} to {high:g}, got {value:g}"


def parse_policy_sets(items: list[str]) -> dict[str, float | int | bool]:
    """``KEY=VALUE`` strings as policy overrides; raises ValueError naming the bad item."""
    overrides: dict[str, float | int | bool] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} is not KEY=VALUE, e.g. --set end_of_turn_ms=900")
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            overrides[key.strip()] = lowered == "true"
            continue
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"--set {item!r}: the value must be a number or true/false") from None
        overrides[key.strip()] = int(number) if number.is_integer() else number
    return overrides


class _DiscardSink:
    """A sink for the real engines' start-up check; nothing is played into it."""

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        pass

    def flush(self) -> None:
        pass


async def _serve(bridge: Any, preflight: Any) -> str | None:
    """Run the bridge until SIGINT/SIGTERM; a one-line error for the user, or None."""
    from duplexer.protocols.metrics_endpoint import MetricsPortTaken
    from duplexer.protocols.mqtt_bridge import BrokerLoginRefused
    from duplexer.runtime.clock import LoopClock

    if preflight is not None:
        try:  # load the models now, so a missing package stops the command, not the first device
            preflight(LoopClock(), _DiscardSink())
        except Exception as exc:
            return f"--engines real could not start: {type(exc).__name__}: {exc}"
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, bridge.request_stop)
    try:
        await bridge.run()
    except (BrokerLoginRefused, MetricsPortTaken) as exc:
        return str(exc)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return None


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from duplexer.actors.engine_choice import chosen_engines, with_engines
    from duplexer.actors.pipeline import PipelineConfig
    from duplexer.actors.tool_config import registry_from_args
    from duplexer.protocols.engine_factory import EnginesUnavailable, real_engines, real_pipeline, scripted_engines
    from duplexer.protocols.executor_cli import one_line, share_request, transport_executor
    from duplexer.protocols.mqtt_bridge import BridgeConfig, MqttBridge
    from duplexer.protocols.mqtt_connection import broker_settings
    from duplexer.protocols.mqtt_link import policy_with
    from duplexer.protocols.mqtt_topics import Topics, WireError, valid_device_id
    from duplexer.protocols.observability_cli import observability_settings
    from duplexer.runtime.logging import configure_logging

    try:
        configure_logging(args.log_level)
        password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
        broker = broker_settings(args.broker, args.username, password, args.tls, args.ca_file, args.tls_insecure)
        topics = Topics(args.prefix)
        overrides = parse_policy_sets(args.set)
        tokens = load_device_tokens(args.device_tokens) if args.device_tokens is not None else None
        base_policy = chosen_policy(args)
        observability = observability_settings(args, None)
        share_request(args)  # checked here too, so every bad option stops the command before Ray starts
        tools = registry_from_args(args)
    except ValueError as exc:
        return fail(str(exc))
    if args.device_id is not None and not valid_device_id(args.device_id):
        return fail(
            f"--device-id {args.device_id!r} is not valid: use 1-64 of A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    if not valid_device_id(args.bridge_id):
        return fail(f"--bridge-id {args.bridge_id!r} is not valid: use 1-64 of A-Z a-z 0-9 _ . -")
    try:
        policy = policy_with(base_policy, overrides)
    except WireError as exc:
        return fail(f"--set: {exc.message}")
    limits = (
        _in_range(args.device_idle_timeout, "--device-idle-timeout", IDLE_TIMEOUT_RANGE_S, "seconds"),
        _in_range(args.device_rate_limit, "--device-rate-limit", RATE_LIMIT_RANGE_PER_S, "messages per second"),
    )
    for problem in limits:
        if problem:
            return fail(problem)
    if args.scripted_lead_silence_ms != 0.0 and args.engines != "scripted":
        return fail("--scripted-lead-silence-ms needs --engines scripted")
    if not 0.0 <= args.scripted_lead_silence_ms <= 5000.0:
        return fail(f"--scripted-lead-silence-ms must be 0-5000, got {args.scripted_lead_silence_ms:g}")
    preflight = None
    if args.engines == "real":
        try:
            engines = preflight = real_engines()
        except EnginesUnavailable as exc:
            return fail(str(exc))
    else:
        engines = scripted_engines(lead_silence_ms=args.scripted_lead_silence_ms)
    try:  # --vad/--asr/--tts/--turn-detector NAME: built-in or plug-in engines over those
        engines = with_engines(engines, chosen_engines(args))
    except ValueError as exc:  # an unknown name, a plug-in that fails to import or of the wrong type
        return fail(str(exc))
    try:  # with --executor ray: reach the cluster (or start Ray here) and deploy the shared engines
        executor = transport_executor(args, engines)
    except (ValueError, RuntimeError) as exc:  # a bad option, no Ray, no cluster, a failed deployment
        return fail(one_line(exc))
    config = BridgeConfig(
        topics=topics,
        device_id=args.device_id,
        bridge_id=args.bridge_id,
        pipeline=replace(
            real_pipeline(policy) if args.engines == "real" else PipelineConfig(policy=policy), tool_registry=tools
        ),
        make_session=executor.make_session,
        device_idle_timeout_s=args.device_idle_timeout,
        device_messages_per_s=args.device_rate_limit,
        device_tokens=tokens,
        observability=observability,
    )
    bridge = MqttBridge(broker, executor.engines, config)
    try:
        error = asyncio.run(_serve(bridge, preflight))
    finally:
        executor.close()
    return fail(error) if error else 0


def register(commands: Any) -> None:
    from duplexer.actors.tool_config import add_tools_argument

    mqtt = commands.add_parser(
        "mqtt",
        help="bridge an MQTT broker to sessions, one per device (robots, IoT)",
        description="Bridge an MQTT broker to duplexer: each device publishes microphone frames and "
        "control messages and receives bot audio and events, with one session per device id. "
        "The topic scheme and payloads are in docs/mqtt.md. Reconnects with backoff when the "
        "broker goes away; sessions keep their state meanwhile. With --executor ray, each session's "
        "controller, context, LLM and TTS run in a Ray actor (on a local Ray instance, or a cluster with "
        "--ray-address), and --share puts engines every session shares on Ray Serve, e.g. the LLM on GPU "
        "nodes with --share llm --llm-gpus 1 (docs/deploy.md). Stop with Ctrl-C or SIGTERM.",
    )
    mqtt.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:1883 or mqtts://host:8883")
    mqtt.add_argument("--username", help="broker user name")
    mqtt.add_argument("--password", help=f"broker password (or set {PASSWORD_ENV}, which keeps it out of ps)")
    mqtt.add_argument("--tls", action="store_true", help="connect with TLS (implied by mqtts://)")
    mqtt.add_argument("--ca-file", type=Path, metavar="PATH", help="CA certificate for TLS (default: system CAs)")
    mqtt.add_argument("--tls-insecure", action="store_true", help="skip TLS certificate and host checks (testing only)")
    who = mqtt.add_mutually_exclusive_group(required=True)
    who.add_argument("--device-id", metavar="ID", help="serve this one device")
    who.add_argument("--all-devices", action="store_true", help="serve every device under the prefix")
    mqtt.add_argument(
        "--engines",
        choices=("real", "scripted"),
        default="real",
        help="real (default): the models of duplexer.actors.models; scripted: model-free engines "
        "(energy VAD, canned transcript, scripted LLM, a humming voice), for tests "
        "and benchmarks only",
    )
    mqtt.add_argument(
        "--scripted-lead-silence-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="with --engines scripted: open each reply with this much digital silence, as Piper's open "
        "with about 250 ms (default 0)",
    )
    mqtt.add_argument("--prefix", default="duplexer", help="topic prefix (default: duplexer)")
    mqtt.add_argument("--bridge-id", default="main", help="names this bridge's status topic {prefix}/_bridge/ID/status")
    mqtt.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy parameter for every session, e.g. --set end_of_turn_ms=900 (see `duplexer policy show`)",
    )
    mqtt.add_argument(
        "--device-idle-timeout",
        type=float,
        default=DEFAULT_DEVICE_IDLE_TIMEOUT_S,
        metavar="S",
        help="end a device's session after this many seconds without a message from it, e.g. a device "
        f"that vanished without a last will (default {DEFAULT_DEVICE_IDLE_TIMEOUT_S:g})",
    )
    mqtt.add_argument(
        "--device-rate-limit",
        type=float,
        default=DEFAULT_DEVICE_MESSAGES_PER_S,
        metavar="N",
        help="messages per second the bridge handles for one device; the excess is dropped and reported "
        f"as rate_limited (default {DEFAULT_DEVICE_MESSAGES_PER_S:g}, bursts of {DEFAULT_DEVICE_BURST_MESSAGES})",
    )
    mqtt.add_argument(
        "--device-tokens",
        type=Path,
        metavar="FILE",
        help='JSON object of device id to token, e.g. {"robot1": "a-long-secret"}: a device\'s config must '
        "carry its token, else it gets error unauthorized and no session (see docs/mqtt.md)",
    )
    mqtt.add_argument("--log-level", default="INFO", help="structured log level (default: INFO)")
    add_tools_argument(mqtt)
    add_observability_arguments(mqtt, own_token=True)
    add_transport_executor_arguments(mqtt)
    add_policy_argument(mqtt)
    add_engine_arguments(mqtt)
    mqtt.set_defaults(handler=run)
