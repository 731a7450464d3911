"""A robot whose microphone hears its own loudspeaker, over a real mosquitto: with the bridge cancelling its
echo it holds a three-turn conversation with a barge-in and never interrupts itself; without, it does.

The device plays the bot audio it receives through a simulated room (image-source impulse response,
device latency with clock drift, a mildly nonlinear loudspeaker; duplexer.sims.echo_path), at the level
of the user's speech (0 dB), and adds the user's real speech (VAP phrases). The bot speaks real recorded
speech. Everything runs in real time in one event loop, as in test_mqtt_bridge.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import numpy as np
import pytest

from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.protocols.mqtt_device import DeviceClient
from duplexer.protocols.mqtt_topics import Channel, EchoConfig, EchoMode, pack_audio
from duplexer.sims.echo_path import ROOMS, EchoPath
from tests.conftest import run
from tests.echo_device import (  # noqa: F401 (captured_log: the "log" fixture)
    MIC_FRAME,
    MIC_RATE_HZ,
    EchoingDevice,
    captured_log,
    log_lines,
    self_interruptions,
    speaking_engines,
    timeline,
)
from tests.mqtt_broker import device, running_bridge

pytestmark = pytest.mark.slow

QUESTION = "basketball_short_female_en-US-Wavenet-E.wav"
FOLLOW_UP = "bike_short_female_en-US-Wavenet-E.wav"
INTERRUPTION = "bike_short_male_en-US-Wavenet-A.wav"
REPLY = "Sure. That is a good question, and here is an answer to it."
"""About 4 s of the bot's speech: long enough to hear itself, short enough for a quick test."""
LIVING_ROOM = EchoPath(ROOMS["living"], delay_ms=120.0, drift_ppm=50.0, echo_db=0.0)


def ended(reply_id: str) -> Any:
    return lambda e: e["type"] in ("playout_done", "playout_stopped") and e.get("reply_id") == reply_id


async def echoing(dev: DeviceClient, sim: EchoingDevice) -> asyncio.Task[None]:
    sim.client = dev
    dev.on_audio, dev.on_event = sim.heard, sim.event
    dev.control("start")
    await dev.wait_type("session", 5)
    return asyncio.create_task(sim.run())


def test_with_echo_cancellation_the_robot_holds_a_conversation_with_a_barge_in_and_never_stops_itself(
    broker: LoopbackBroker,
) -> None:
    sim = EchoingDevice(LIVING_ROOM)
    echo = EchoConfig(EchoMode.SERVER, playout_delay_ms=round(LIVING_ROOM.delay_ms))

    async def scenario() -> tuple[Any, ...]:
        engines = speaking_engines(lambda _: REPLY)
        async with running_bridge(broker, engines), device(broker, "robot1", MIC_RATE_HZ, echo=echo) as dev:
            mic = await echoing(dev, sim)
            await sim.say(QUESTION)  # turn 1: answered and played to its end
            first = await dev.wait_type("playout_started", 10)
            first_end = await dev.wait_for(ended(first["reply_id"]), 15)
            await sim.say(FOLLOW_UP)  # turn 2: the user barges in 1.2 s into the answer
            second = await dev.wait_for(lambda e: e["type"] == "playout_started" and e is not first, 10)
            await asyncio.sleep(1.2)
            await sim.say(INTERRUPTION)
            second_end = await dev.wait_for(ended(second["reply_id"]), 5)
            third = await dev.wait_for(  # turn 3: the interruption is answered
                lambda e: (
                    e["type"] == "playout_started" and e["reply_id"] not in (first["reply_id"], second["reply_id"])
                ),
                10,
            )
            third_end = await dev.wait_for(ended(third["reply_id"]), 15)
            asked = len(dev.events)
            dev.control("stats")
            stats = await dev.wait_type("stats", 5, start=asked)
            mic.cancel()
            return first_end, second_end, third_end, stats, list(dev.events), list(dev.event_arrivals_s)

    first_end, second_end, third_end, stats, events, arrivals = run(scenario(), timeout_s=75)
    echo_stats = stats["echo"]
    print(f"echo stats: {echo_stats}")  # the per-frame cost of cancellation, in the test log
    happened = timeline(events, arrivals, sim.user_spans)
    assert first_end["type"] == "playout_done" and third_end["type"] == "playout_done", happened
    assert second_end["type"] == "playout_stopped", happened  # the one barge-in
    barge_ins = [e for e in events if e["type"] == "state" and e["reason"] == "barge-in"]
    assert len(barge_ins) == 1, happened
    assert [e["role"] for e in events if e["type"] == "history"].count("user") == 3, happened
    assert self_interruptions(events, arrivals, sim.user_spans) == 0, happened
    assert echo_stats["mode"] == "server" and echo_stats["degraded"] is None and echo_stats["locked"]
    assert echo_stats["passed_through"] == 0 and echo_stats["playout_reports"] >= 3
    assert echo_stats["cancelled"] > 500 and echo_stats["cancelled"] + echo_stats["idle"] == echo_stats["frames"]
    # 20 ms frames on the event loop: the canceller must take a small part of each.
    assert echo_stats["process_ms_mean"] < 5.0


def test_without_echo_cancellation_the_same_robot_interrupts_itself(broker: LoopbackBroker) -> None:
    sim = EchoingDevice(LIVING_ROOM)

    async def scenario() -> tuple[Any, ...]:
        engines = speaking_engines(lambda _: REPLY)
        echo = EchoConfig(EchoMode.DEVICE)  # "the device cancels its echo": it does not
        async with running_bridge(broker, engines), device(broker, "robot1", MIC_RATE_HZ, echo=echo) as dev:
            mic = await echoing(dev, sim)
            await sim.say(QUESTION)
            first = await dev.wait_type("playout_started", 10)
            await dev.wait_for(ended(first["reply_id"]), 15)
            mic.cancel()
            return list(dev.events), list(dev.event_arrivals_s)

    events, arrivals = run(scenario(), timeout_s=45)
    assert self_interruptions(events, arrivals, sim.user_spans) > 0, timeline(events, arrivals, sim.user_spans)


def test_a_loopback_reference_that_stops_turns_cancellation_off_and_the_user_is_still_heard(
    broker: LoopbackBroker, log: io.StringIO
) -> None:
    """Loopback mode, bad input: the device sends its loopback, then stops; the bridge warns, counts, and
    passes the microphone on (the user's question is still heard and answered)."""
    sim = EchoingDevice(LIVING_ROOM)
    sent: list[int] = []

    async def scenario() -> tuple[Any, ...]:
        engines = speaking_engines(lambda _: REPLY)
        echo = EchoConfig(EchoMode.LOOPBACK)
        async with running_bridge(broker, engines), device(broker, "robot1", MIC_RATE_HZ, echo=echo) as dev:
            send_frame = dev.send_frame

            def with_loopback(pcm: bytes) -> None:  # the loopback frame goes first, numbered like the mic's
                if len(sent) < 50:  # one second of it, then it stops
                    dev.publish(Channel.AUDIO_REF, pack_audio(dev.seq, bytes(2 * MIC_FRAME)), 0)
                    sent.append(dev.seq)
                send_frame(pcm)

            dev.send_frame = with_loopback  # type: ignore[method-assign]
            mic = await echoing(dev, sim)
            await asyncio.sleep(2.0)
            await sim.say(QUESTION)
            await dev.wait_type("playout_started", 10)
            asked = len(dev.events)
            dev.control("stats")
            stats = await dev.wait_type("stats", 5, start=asked)
            mic.cancel()
            return stats, list(dev.events)

    stats, events = run(scenario(), timeout_s=45)
    assert stats["echo"]["mode"] == "loopback" and stats["echo"]["degraded_episodes"] == {"stopped": 1}
    warning = log_lines(log, "echo_reference_degraded")
    assert warning and warning[0]["reason"] == "stopped" and warning[0]["device_id"] == "robot1"
    assert any(e["type"] == "speech_start" for e in events)  # the user was heard, and answered
    assert np.isclose(len(sent), 50)


@pytest.mark.parametrize(
    ("config", "reference", "code"),
    [
        ({"echo": {"mode": "loopback"}}, None, "bad_config"),  # echo without "version": 2
        ({"version": 2, "echo": {"mode": "speaker"}}, None, "bad_config"),
        ({"version": 2, "echo": {"playout_delay_ms": -5}}, None, "bad_config"),
        ({"version": 2, "echo": {"mode": "server"}}, pack_audio(0, bytes(2 * MIC_FRAME)), "bad_config"),
        ({"version": 2, "echo": {"mode": "loopback"}}, pack_audio(0, bytes(100)), "wrong_frame_size"),
        ({"version": 2, "echo": {"mode": "loopback"}}, b"XX" + bytes(640), "unknown_format"),
    ],
)
def test_bad_echo_config_and_reference_frames_get_their_error_codes(
    broker: LoopbackBroker, config: dict[str, Any], reference: bytes | None, code: str
) -> None:
    async def scenario() -> dict[str, Any]:
        async with running_bridge(broker), device(broker, "robot1", MIC_RATE_HZ) as dev:
            dev.control("start")
            await dev.wait_type("session", 5)
            body = {"sample_rate_hz": MIC_RATE_HZ, **config}
            dev.publish(Channel.CONFIG, json.dumps(body).encode(), 1, retain=True)
            if reference is not None:
                await dev.wait_type("config", 5, echo=config["echo"] | {"mode": config["echo"]["mode"]})
                dev.publish(Channel.AUDIO_REF, reference, 0)
            return await dev.wait_type("error", 5, code=code)

    error = run(scenario(), timeout_s=30)
    assert error["source"] == "mqtt" and "\n" not in error["message"]
