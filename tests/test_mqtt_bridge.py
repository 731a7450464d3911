"""The MQTT bridge against a real mosquitto on loopback, with scripted engines and real speech.

Each test runs a bridge and device clients in one event loop, in real time: a
turn, a barge-in, the interrupt control, bad input beside a healthy device, a
broker restart in the middle of a conversation, credentials and TLS.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from duplexer.actors.context import ContextActor
from duplexer.protocols.mqtt_bridge import BrokerLoginRefused, MqttBridge
from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.protocols.mqtt_connection import broker_settings, make_client
from duplexer.protocols.mqtt_device import DeviceClient
from duplexer.protocols.mqtt_link import DeviceLink
from duplexer.protocols.mqtt_topics import (
    FLAG_REPLY_START,
    MAX_AUDIO_PAYLOAD_BYTES,
    Channel,
    Topics,
    pack_audio,
)
from duplexer.runtime.logging import configure_logging
from tests.conftest import run
from tests.mqtt_broker import (
    LONG_REPLY,
    SHORT_REPLY,
    device,
    engines_replying,
    ensure_mosquitto,
    running_bridge,
    speech,
    until,
)

pytestmark = pytest.mark.slow

QUESTION = "basketball_short_female_en-US-Wavenet-E.wav"
INTERRUPTION = "bike_short_male_en-US-Wavenet-A.wav"
TOPICS = Topics()


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> None:
    """An earlier test's `main` may have pointed the log at a capsys stream that is closed now."""
    configure_logging(stream=sys.__stderr__)


def history_of(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["role"], e["text"]) for e in events if e["type"] == "history"]


def context_history(bridge: MqttBridge, device_id: str) -> list[tuple[str, str]]:
    session = bridge.links[device_id].session
    assert session is not None
    (context,) = [a for a in session.supervisor.actors if isinstance(a, ContextActor)]
    return list(context.manager.history)


async def bridge_link(bridge: MqttBridge, device_id: str) -> DeviceLink:
    await until(lambda: device_id in bridge.links, 5, f"the bridge to hear from {device_id}")
    return bridge.links[device_id]


def is_strict_prefix_in_words(part: str, whole: str) -> bool:
    words, all_words = part.split(), whole.split()
    return 0 < len(words) < len(all_words) and all_words[: len(words)] == words


async def ask(dev: DeviceClient, wav: str, quiet_ms: float = 8000.0) -> asyncio.Task[None]:
    """Speak a wav in real time, then keep the microphone open on silence (returned as a task)."""
    pcm, _ = speech(wav)
    await dev.stream(pcm)
    return asyncio.create_task(dev.silence(quiet_ms))


def test_a_spoken_question_gets_a_spoken_answer_through_the_broker(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker) as bridge, device(broker, "robot1") as dev:
            dev.control("start", policy={"end_of_turn_ms": 650})
            started = await dev.wait_type("session", 5, state="started")
            quiet = await ask(dev, QUESTION)
            done = await dev.wait_type("playout_done", 10)
            dev.control("stats")
            stats = await dev.wait_type("stats", 5)
            quiet.cancel()
            return started, done, stats, list(dev.events), list(dev.audio), bridge.links["robot1"].policy

    started, done, stats, events, audio, policy = run(scenario())
    assert started["audio_in"]["sample_rate_hz"] == 24_000
    assert started["audio_out"] == {"encoding": "pcm16le", "sample_rate_hz": 22_050, "channels": 1, "frame_ms": 20}
    assert started["policy"]["end_of_turn_ms"] == 650 == policy.end_of_turn_ms
    states = [e["new_state"] for e in events if e["type"] == "state"]
    assert states == ["UserSpeaking", "UserPaused", "BotReplying", "Silence"]
    assert {"speech_start", "speech_stop", "transcript", "bot_text", "playout_started"} <= {e["type"] for e in events}
    assert history_of(events) == [("user", "hello"), ("assistant", SHORT_REPLY)]
    # Every played frame arrived once, in sequence, at the declared rate, paced in real time.
    assert len(audio) == math.ceil(done["played_ms"] / 20 - 1e-6)
    assert [f.seq for f in audio] == list(range(len(audio)))
    assert audio[0].flags & FLAG_REPLY_START and not any(f.flags & FLAG_REPLY_START for f in audio[1:])
    assert all(len(f.pcm) == 2 * 441 for f in audio[:-1])
    span_ms = 1000 * (audio[-1].arrival_s - audio[0].arrival_s)
    assert abs(span_ms - (done["played_ms"] - 20)) < 500
    inbound = stats["audio_in"]
    assert inbound["frames"] == inbound["delivered"] > 80
    assert inbound["lost"] == inbound["late"] == inbound["resets"] == 0
    assert inbound["pipeline_frames"] >= inbound["frames"] - 2  # 24 kHz frames became 16 kHz frames
    assert stats["bad_messages"] == {} and stats["audio_out"]["frames"] == len(audio)


def test_user_speech_over_the_bot_stops_its_audio_and_is_answered(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker, engines_replying(LONG_REPLY)), device(broker, "robot1") as dev:
            dev.control("start")
            await dev.wait_type("session", 5)
            quiet = await ask(dev, QUESTION)
            first = await dev.wait_type("playout_started", 10)
            await asyncio.sleep(0.6)
            quiet.cancel()
            barge_in_s = asyncio.get_running_loop().time()
            quiet = await ask(dev, INTERRUPTION)
            stopped = await dev.wait_type("playout_stopped", 5, reply_id=first["reply_id"])
            second = await dev.wait_for(
                lambda e: e["type"] == "playout_started" and e["reply_id"] != first["reply_id"], 10
            )
            quiet.cancel()
            return barge_in_s, stopped, second, list(dev.events), list(dev.audio)

    barge_in_s, stopped, second, events, audio = run(scenario())
    assert any(e["type"] == "state" and e["reason"] == "barge-in" for e in events)
    reply_starts = [i for i, f in enumerate(audio) if f.flags & FLAG_REPLY_START]
    assert len(reply_starts) == 2
    # The long reply (about 9 s) stopped soon after the user's speech began (the rule needs 500 ms of it).
    last_of_first = audio[reply_starts[1] - 1].arrival_s
    assert last_of_first - barge_in_s < 2.0
    assert 500 < stopped["played_ms"] < 3500
    assistant = [text for role, text in history_of(events) if role == "assistant"]
    assert assistant and is_strict_prefix_in_words(assistant[0], LONG_REPLY)
    assert second["reply_id"].startswith("t2")


def test_the_interrupt_control_stops_the_bot_and_history_keeps_what_was_heard(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker, engines_replying(LONG_REPLY)) as bridge, device(broker, "robot1") as dev:
            dev.control("start")
            await dev.wait_type("session", 5)
            quiet = await ask(dev, QUESTION)
            playing = await dev.wait_type("playout_started", 10)
            await asyncio.sleep(1.0)
            dev.control("interrupt")
            ack = await dev.wait_type("interrupt", 5)
            stopped = await dev.wait_type("playout_stopped", 5)
            stopped_at_s = dev.event_arrivals_s[dev.events.index(stopped)]
            await dev.wait_for(lambda e: e["type"] == "history" and e["role"] == "assistant", 5)
            await asyncio.sleep(0.5)
            dev.control("interrupt")  # nothing plays now
            idle_ack = await dev.wait_type("interrupt", 5, stopped=False)
            quiet.cancel()
            history = context_history(bridge, "robot1")
            return playing, ack, stopped, stopped_at_s, idle_ack, list(dev.events), list(dev.audio), history

    playing, ack, stopped, stopped_at_s, idle_ack, events, audio, history = run(scenario())
    assert ack["stopped"] is True and ack["reply_id"] == playing["reply_id"] == stopped["reply_id"]
    assert 800 < stopped["played_ms"] < 2500
    assert idle_ack["reply_id"] is None
    last_state = [e for e in events if e["type"] == "state"][-1]
    assert (last_state["new_state"], last_state["reason"]) == ("Silence", "playout stopped")
    assert not [f for f in audio if f.arrival_s > stopped_at_s + 0.1]  # no audio after the stop
    assert history[0] == ("user", "hello")
    assert history[1][0] == "assistant" and is_strict_prefix_in_words(history[1][1], LONG_REPLY)


def test_bad_input_is_refused_message_by_message_and_other_devices_carry_on(broker: LoopbackBroker) -> None:
    log = io.StringIO()
    configure_logging("INFO", stream=log)
    bad = "bad1"

    def topic(channel: Channel, device_id: str = bad) -> str:
        return TOPICS.device(device_id, channel)

    wrong_16k_frame = pack_audio(0, bytes(100))
    cases: list[tuple[str, bytes, str]] = [
        (topic(Channel.AUDIO_IN), pack_audio(0, bytes(640)), "unknown_device"),
        (topic(Channel.CONFIG), b'{"sample_rate_hz": 16000, "encoding": "opus"}', "unknown_format"),
        (topic(Channel.CONTROL), b"{not json", "malformed_json"),
        (topic(Channel.CONTROL), b'{"type": "dance"}', "bad_control"),
        (topic(Channel.CONTROL), b'{"type": "policy", "policy": {"pause_ms": -5}}', "bad_policy"),
        (topic(Channel.CONTROL), b'{"type": "policy", "policy": {"no_such_knob": 1}}', "bad_policy"),
        (topic(Channel.CONFIG), b'{"sample_rate_hz": 16000}', ""),
        (topic(Channel.AUDIO_IN), b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(640), "unknown_format"),
        (topic(Channel.AUDIO_IN), wrong_16k_frame, "wrong_frame_size"),
        (topic(Channel.AUDIO_IN), pack_audio(1, bytes(MAX_AUDIO_PAYLOAD_BYTES)), "oversized"),
        (topic(Channel.CONTROL), b'{"type": "start", "x": "' + b"y" * 20_000 + b'"}', "oversized"),
        (TOPICS.device("no spaces allowed", Channel.CONTROL), b'{"type": "start"}', "bad_device_id"),
    ]
    expected = [code for _, _, code in cases if code]

    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker, error_repeat_s=0.0) as bridge, device(broker, "good") as good:
            good.control("start")
            await good.wait_type("session", 5)
            errors: list[dict[str, Any]] = []
            attacker = make_client(broker_settings(broker.url), "attacker")
            async with attacker:
                await attacker.subscribe(f"{TOPICS.prefix}/+/events", 1)

                async def collect() -> None:
                    async for message in attacker.messages:
                        event = json.loads(message.payload)  # type: ignore[arg-type]
                        if event["type"] == "error":
                            errors.append(event)

                collector = asyncio.create_task(collect())
                speaking = asyncio.create_task(ask(good, QUESTION))
                for target, payload, _ in cases:
                    await attacker.publish(target, payload, qos=1)
                await until(lambda: len(errors) >= len(expected), 10, "an error event per bad message")
                quiet = await speaking
                await good.wait_type("playout_done", 10)
                # The misbehaving device recovers as soon as it sends proper frames.
                for seq in range(1, 30):
                    await attacker.publish(topic(Channel.AUDIO_IN), pack_audio(seq, bytes(640)))
                await until(lambda: bridge.links[bad].session is not None, 5, "a session for the fixed device")
                collector.cancel()
            quiet.cancel()
            return errors, list(good.events), bridge.links[bad].stats(), bridge

    try:
        errors, good_events, bad_stats, bridge = run(scenario())
    finally:
        configure_logging(stream=sys.__stderr__)
    assert [e["code"] for e in errors] == expected
    assert all(e["source"] == "mqtt" and e["message"] and e["fatal"] is False for e in errors)
    wrong_size = errors[expected.index("wrong_frame_size")]["message"]
    assert "100 PCM bytes" in wrong_size and "640 bytes" in wrong_size
    assert not [e for e in good_events if e["type"] == "error"]
    assert history_of(good_events) == [("user", "hello"), ("assistant", SHORT_REPLY)]
    assert bad_stats["bad_messages"]["oversized"] == 2
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    logged = [line["code"] for line in lines if line.get("event") == "mqtt_bad_input"]
    assert logged == expected
    assert bridge.counters["refused_bad_device_id"] == 1


def test_repeated_bad_frames_give_one_error_event_per_second_and_are_all_counted(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker) as bridge, device(broker, "robot1", rate_hz=16_000) as dev:
            for seq in range(20):
                dev.publish(Channel.AUDIO_IN, pack_audio(seq, bytes(100)), 0)
            link = await bridge_link(bridge, "robot1")
            await until(lambda: link.bad["wrong_frame_size"] == 20, 5, "20 refusals")
            await asyncio.sleep(0.3)
            return dev.of_type("error")

    errors = run(scenario())
    assert len(errors) == 1 and errors[0]["code"] == "wrong_frame_size"


def test_a_broker_restart_mid_conversation_keeps_the_session_and_the_words_said_meanwhile(
    broker: LoopbackBroker,
) -> None:
    engines = engines_replying(SHORT_REPLY, transcripts=("first question", "second question"))

    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker, engines) as bridge, device(broker, "robot1") as dev:
            dev.control("start")
            await dev.wait_type("session", 5)
            quiet = await ask(dev, QUESTION)
            await dev.wait_type("playout_started", 10)
            await asyncio.sleep(0.4)
            quiet.cancel()
            broker.stop(crash=True)  # the bot is speaking; the broker dies
            pcm, _ = speech(INTERRUPTION)
            await dev.stream(pcm)  # the user speaks while the broker is down: the device holds it
            await dev.silence(300)
            broker.start()
            quiet = asyncio.create_task(dev.silence(10_000))
            outage = await dev.wait_type("outage", 15)
            answered = await dev.wait_for(lambda e: e["type"] == "playout_done" and e["reply_id"].startswith("t2"), 15)
            dev.control("stats")
            stats = await dev.wait_type("stats", 5)
            quiet.cancel()
            history = context_history(bridge, "robot1")
            return outage, answered, stats, list(dev.events), history, bridge.counters["disconnects"]

    outage, answered, stats, events, history, disconnects = run(scenario())
    assert disconnects == 1
    assert outage["replies_interrupted"] == 1 and outage["down_ms"] > 1500
    assert outage["session_id"] == answered["session_id"] == "robot1-1"
    assert [e["state"] for e in events if e["type"] == "session"] == ["started"]
    inbound = stats["audio_in"]
    assert inbound["delayed"] >= 90  # the 1.8 s question spoken during the outage came late, not never
    assert inbound["lost"] <= 5 and inbound["resets"] == 0
    assert stats["interrupts"] == {"broker_outage": 1}
    assert [role for role, _ in history] == ["user", "assistant", "user", "assistant"]
    assert history[0] == ("user", "first question") and history[2] == ("user", "second question")
    assert is_strict_prefix_in_words(history[1][1], SHORT_REPLY) or history[1][1] == ""
    assert history[3] == ("assistant", SHORT_REPLY)


def test_stop_ends_the_session_and_start_begins_a_new_one(broker: LoopbackBroker) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running_bridge(broker), device(broker, "robot1", rate_hz=16_000) as dev:
            dev.control("start")
            await dev.wait_type("session", 5, state="started")
            dev.control("stop")
            await dev.wait_type("session", 5, state="stopped")
            dev.send_frame(bytes(640))
            await dev.wait_type("error", 5, code="session_stopped")
            dev.control("start")
            await dev.wait_type("session", 5, state="started", session_id="robot1-2")
            return dev.events

    events = run(scenario())
    assert [e["type"] for e in events if e["type"] in ("session", "stats")] == [
        "session",
        "stats",
        "session",
        "session",
    ]


def test_an_offline_device_loses_its_session_after_a_grace_period_and_gets_its_events_when_back(
    broker: LoopbackBroker,
) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with (
            running_bridge(broker, device_offline_grace_s=0.3) as bridge,
            device(broker, "robot1", rate_hz=16_000) as dev,
        ):
            dev.control("start")
            await dev.wait_type("session", 5)
            dev.publish(Channel.STATUS, b"offline", 1, retain=True)  # what its last will would say
            await until(lambda: bridge.links["robot1"].session is None, 5, "the session to stop")
            await asyncio.sleep(0.2)
            held_back = [e["type"] for e in dev.events]
            dev.publish(Channel.STATUS, b"online", 1, retain=True)
            stopped = await dev.wait_type("session", 5, state="stopped")
            return held_back, stopped, dev.events

    held_back, stopped, events = run(scenario())
    assert "stats" not in held_back  # nothing was sent while the device was away
    assert stopped["reason"] == "device_offline"
    assert [e["type"] for e in events][-2:] == ["stats", "session"]


def test_username_and_password_are_passed_to_the_broker(tmp_path: Path) -> None:
    passwd = shutil.which("mosquitto_passwd")
    assert passwd, "mosquitto_passwd comes with mosquitto"
    password_file = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(password_file), "robot", "s3cret"], check=True, capture_output=True)
    password_file.chmod(0o600)
    broker = LoopbackBroker(tmp_path / "broker", binary=ensure_mosquitto(), password_file=password_file)
    broker.start()
    try:
        good = broker_settings(broker.url, username="robot", password="s3cret")
        wrong = broker_settings(broker.url, username="robot", password="guess")

        async def scenario() -> str:
            async with running_bridge(broker, settings=good), device(broker, "robot1", settings=good) as dev:
                dev.control("start")
                started = await dev.wait_type("session", 5)
            refused = MqttBridge(wrong, engines_replying())
            with pytest.raises(BrokerLoginRefused) as caught:
                await refused.run()
            assert started["state"] == "started"
            return str(caught.value)

        message = run(scenario())
    finally:
        broker.stop()
    assert "refused the login" in message and "--password" in message


def test_tls_is_passed_to_the_broker(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl makes the test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    broker = LoopbackBroker(tmp_path / "broker", binary=ensure_mosquitto(), tls_cert=(cert, key))
    broker.start()
    try:
        assert broker.url.startswith("mqtts://")
        trusted = broker_settings(broker.url, ca_file=cert)

        async def scenario() -> tuple[dict[str, Any], bool]:
            async with running_bridge(broker, settings=trusted), device(broker, "robot1", settings=trusted) as dev:
                dev.control("start")
                started = await dev.wait_type("session", 5)
            untrusting = aiomqtt.Client("127.0.0.1", broker.port, tls_context=ssl.create_default_context())
            try:
                async with untrusting:
                    pass
            except aiomqtt.MqttError:
                return started, True
            return started, False

        started, refused_unknown_ca = run(scenario())
    finally:
        broker.stop()
    assert started["state"] == "started"
    assert refused_unknown_ca  # the certificate really is checked


def test_real_models_hold_a_two_turn_conversation_over_the_broker(broker: LoopbackBroker) -> None:
    """The acceptance check: Silero, Whisper, SmolLM2 and Piper from their packages, behind MQTT.

    The models ship as installed packages, so one that cannot load fails this test: it never skips.
    """
    from duplexer.protocols.engine_factory import real_engines

    build = real_engines()
    questions = [
        ("basketball_short_female_en-US-Wavenet-E.wav", "basketball"),
        ("bike_short_male_en-US-Wavenet-A.wav", "bike"),
    ]

    async def scenario() -> tuple[Any, ...]:
        from duplexer.runtime.clock import LoopClock
        from duplexer.sims.simulator import RecordingSink

        build(LoopClock(), RecordingSink(LoopClock()))  # loads the shared models once
        async with running_bridge(broker, build) as bridge, device(broker, "robot1") as dev:
            # On a busy 2-core machine Whisper can take seconds: let the turn wait for its transcript.
            dev.control("start", policy={"asr_final_timeout_ms": 15_000})
            started = await dev.wait_type("session", 30)
            for turn, (wav, _) in enumerate(questions, start=1):
                quiet = await ask(dev, wav, quiet_ms=40_000)
                await dev.wait_for(
                    lambda e, t=turn: e["type"] == "playout_done" and e["reply_id"].startswith(f"t{t}r"), 60
                )
                quiet.cancel()
            history = context_history(bridge, "robot1")
            return started, list(dev.events), list(dev.audio), history

    started, events, audio, history = run(scenario(), timeout_s=180)
    assert [role for role, _ in history] == ["user", "assistant", "user", "assistant"]
    for (_, word), (_, said) in zip(questions, history[0::2], strict=True):
        assert word in said.lower()
    assert all(text.strip() for _, text in history[1::2])
    assert not [e for e in events if e["type"] == "error"]
    rate = started["audio_out"]["sample_rate_hz"]
    heard_s = sum(len(f.pcm) for f in audio) / 2 / rate
    played_s = sum(e["played_ms"] for e in events if e["type"] == "playout_done") / 1000
    assert heard_s > 1.0 and abs(heard_s - played_s) < 0.1
