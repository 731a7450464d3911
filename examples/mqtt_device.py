"""A robot's side of the MQTT bridge: a wav file plays the microphone, a wav file records the speaker.

Start a broker and the bridge, then run this device::

    mosquitto -p 1883 &
    duplexer mqtt --broker mqtt://127.0.0.1:1883 --all-devices --engines scripted &
    python examples/mqtt_device.py --broker mqtt://127.0.0.1:1883 --device-id robot1 \\
        --input question.wav --output reply.wav

The device declares its microphone format in a retained config message,
streams the wav in real time as 20 ms frames (then silence, as a quiet room
would), prints every event the bridge sends as one JSON line, and writes the
bot's audio to ``--output`` at the rate the bridge declares. It stops after the
bot's first reply has played, or after ``--timeout-s``. If the broker goes away
meanwhile, the frames are held and sent when it is back.

Exit codes: 0 when a reply was heard, 1 when none came in time, 2 for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import wave
from pathlib import Path

from duplexer.protocols.mqtt_connection import broker_settings
from duplexer.protocols.mqtt_device import DeviceClient
from duplexer.protocols.mqtt_topics import (
    CONFIG_VERSION,
    AudioFormat,
    EchoConfig,
    EchoMode,
    encode_json,
    parse_device_config,
    valid_device_id,
)

FRAME_MS = 20


def read_microphone(path: Path) -> tuple[bytes, int]:
    """PCM16 mono samples and their rate; raises ValueError naming what the file should be."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                raise ValueError(
                    f"{path} has {wav.getnchannels()} channel(s) of {8 * wav.getsampwidth()} bits; "
                    "the microphone file must be mono 16-bit PCM"
                )
            return wav.readframes(wav.getnframes()), wav.getframerate()
    except (OSError, wave.Error, EOFError) as exc:
        raise ValueError(f"cannot read {path} as a wav file: {exc}") from None


def write_speaker(path: Path, pcm: bytes, rate_hz: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm)


async def talk(args: argparse.Namespace, pcm: bytes, rate_hz: int) -> int:
    broker = broker_settings(args.broker, args.username, args.password, args.tls, args.ca_file)
    fmt = AudioFormat(sample_rate_hz=rate_hz, frame_ms=FRAME_MS)
    echo = None
    if args.echo_mode is not None or args.playout_delay_ms is not None:
        echo = EchoConfig(EchoMode(args.echo_mode or EchoMode.SERVER.value), args.playout_delay_ms)
    device = DeviceClient(
        broker,
        args.device_id,
        fmt,
        on_event=lambda e: print(json.dumps(e), flush=True),
        token=args.token,
        echo=echo,
    )
    async with device:
        await device.wait_for_bridge(timeout_s=10.0)
        device.control("start")
        await device.wait_type("session", timeout_s=10.0)
        await device.stream(pcm)
        # Keep the microphone open (a quiet room) until the bot has answered, as a robot would.
        quiet_room = asyncio.create_task(device.silence(1000.0 * args.timeout_s))
        with contextlib.suppress(TimeoutError):
            await device.wait_for(
                lambda e: e.get("type") in ("playout_done", "playout_stopped"), timeout_s=args.timeout_s
            )
        quiet_room.cancel()
        device.control("stop")
        heard = b"".join(frame.pcm for frame in device.audio)
        out_rate = device.out_rate_hz
    if not heard or out_rate is None:
        print(f"no bot audio within {args.timeout_s} s", file=sys.stderr)
        return 1
    write_speaker(args.output, heard, out_rate)
    print(f"wrote {len(heard) // 2 / out_rate:.2f} s of bot audio at {out_rate} Hz to {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A wav-file robot talking to duplexer over MQTT.")
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:1883 or mqtts://host:8883")
    parser.add_argument("--device-id", default="robot1", help="this device's id (default: robot1)")
    parser.add_argument("--input", type=Path, required=True, help="mono 16-bit wav to use as the microphone")
    parser.add_argument("--output", type=Path, required=True, help="wav file for the bot's audio")
    parser.add_argument("--timeout-s", type=float, default=20.0, help="longest wait for the reply (20)")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--ca-file", type=Path)
    parser.add_argument("--token", help="this device's token, for a bridge started with --device-tokens")
    parser.add_argument(
        "--echo-mode",
        choices=[mode.value for mode in EchoMode],
        help="who cancels this device's echo (config version 2; docs/mqtt.md, Echo); default: the bridge",
    )
    parser.add_argument(
        "--playout-delay-ms", type=int, help="this device's playout delay, where the bridge looks for its echo"
    )
    args = parser.parse_args(argv)
    try:
        if not valid_device_id(args.device_id):
            raise ValueError(f"--device-id {args.device_id!r} is not valid: use A-Z a-z 0-9 _ . -")
        pcm, rate_hz = read_microphone(args.input)
        config = AudioFormat(rate_hz, FRAME_MS).to_json()
        if args.echo_mode is not None or args.playout_delay_ms is not None:
            mode = args.echo_mode or EchoMode.SERVER.value
            delay = {} if args.playout_delay_ms is None else {"playout_delay_ms": args.playout_delay_ms}
            config |= {"version": CONFIG_VERSION, "echo": {"mode": mode, **delay}}
        parse_device_config(encode_json(config))  # the bridge's own checks
        broker_settings(args.broker, args.username, args.password, args.tls, args.ca_file)
    except ValueError as exc:
        print(f"mqtt_device: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(talk(args, pcm, rate_hz))


if __name__ == "__main__":
    sys.exit(main())
