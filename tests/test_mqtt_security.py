"""The MQTT bridge's limits against a real mosquitto: retained replays, idle devices, floods, tokens, ACLs.

Each test plays a client that is hostile but speaks MQTT properly (it may publish
anything, retained or not, on any topic the broker lets it), next to a device that
behaves, and checks that the device keeps its session and its audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.protocols.mqtt_connection import broker_settings, make_client
from duplexer.protocols.mqtt_guard import token_matches
from duplexer.protocols.mqtt_topics import Channel, Topics, encode_json
from duplexer.runtime.logging import configure_logging
from tests.conftest import REPO, run
from tests.mqtt_broker import SHORT_REPLY, device, ensure_mosquitto, running_bridge, speech, until

pytestmark = pytest.mark.slow

QUESTION = "basketball_short_female_en-US-Wavenet-E.wav"
TOPICS = Topics()


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> None:
    configure_logging(stream=sys.__stderr__)


async def publish_all(broker: LoopbackBroker, messages: list[tuple[str, bytes, bool]], **login: Any) -> None:
    """Publish (topic, payload, retain) messages as a stranger, QoS 1, and wait until the broker has them."""
    client = make_client(broker_settings(broker.url, **login), "stranger")
    async with client:
        for topic, payload, retain in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


def retained_litter(n_online: int, stopped: str) -> list[tuple[str, bytes, bool]]:
    """What anyone could leave on a broker: ``online`` for many devices, and a ``stop`` for one."""
    litter = [(TOPICS.device(f"ghost{i}", Channel.STATUS), b"online", True) for i in range(n_online)]
    litter.append((TOPICS.device(stopped, Channel.CONTROL), b'{"type": "stop"}', True))
    return litter


async def answered(dev: Any, start: int = 0) -> dict[str, Any]:
    """Ask the question in real time and wait for the whole spoken answer."""
    pcm, _ = speech(QUESTION)
    await dev.stream(pcm)
    quiet = asyncio.create_task(dev.silence(8000))
    try:
        return await dev.wait_type("playout_done", 10, start=start)
    finally:
        quiet.cancel()


def test_a_retained_stop_does_not_stop_the_devices_future_sessions(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        await publish_all(broker, retained_litter(0, "robot1"))
        async with running_bridge(broker) as bridge, device(broker, "robot1") as dev:
            done = await answered(dev)
            return done, dev.of_type("error"), bridge.counters["retained_ignored"]

    done, errors, ignored = run(scenario())
    assert done["reply_id"] and not errors
    assert ignored >= 1


def test_retained_online_litter_does_not_fill_the_bridge_across_restarts(broker: LoopbackBroker) -> None:
    log = io.StringIO()
    configure_logging("INFO", stream=log)

    async def scenario() -> tuple[Any, ...]:
        await publish_all(broker, retained_litter(20, "nobody"))
        started = []
        for _ in range(2):  # the litter stays on the broker; a restarted bridge sees it again
            bridged = running_bridge(broker, max_devices=10, stats_interval_s=0.2)
            async with bridged as bridge, device(broker, "robot1") as dev:
                dev.control("start")
                started.append(await dev.wait_type("session", 5, state="started"))
                links = set(bridge.links)
                await asyncio.sleep(0.5)
        return started, links

    started, links = run(scenario())
    assert len(started) == 2 and links == {"robot1"}
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    reported = sum(line["retained_ignored"] for line in lines if line.get("event") == "mqtt_ignored")
    assert reported >= 2 * 21  # 20 statuses and a stop replayed to each bridge (and robot1's own status)


def test_acceptance_a_device_holding_its_session_among_retained_litter_starts_and_talks(
    broker: LoopbackBroker,
) -> None:
    """1000 retained ``online`` messages and a retained ``stop`` sit on the broker; the device holds
    its session, talks, survives a bridge restart and talks again."""

    async def scenario() -> tuple[Any, ...]:
        await publish_all(broker, retained_litter(1000, "robot1"))
        async with contextlib.AsyncExitStack() as stack:
            first_bridge = contextlib.AsyncExitStack()
            bridge = await first_bridge.enter_async_context(running_bridge(broker))
            dev = await stack.enter_async_context(device(broker, "robot1"))
            dev.control("start")
            first_session = await dev.wait_type("session", 5, state="started")
            first = await answered(dev)
            first_links = len(bridge.links)
            await first_bridge.aclose()
            mark = len(dev.events)
            bridge = await stack.enter_async_context(running_bridge(broker))  # the litter is replayed to it
            await dev.wait_for_bridge(5)
            second = await answered(dev, start=mark)
            second_session = await dev.wait_type("session", 1, start=mark, state="started")
            ignored = bridge.counters["retained_ignored"]
            return first_session, first, first_links, second, second_session, ignored, dev.of_type("error")

    first_session, first, first_links, second, second_session, ignored, errors = run(scenario(), 90)
    assert first_session["session_id"] == "robot1-1" and first["played_ms"] > 0
    assert second_session["session_id"] == "robot1-1" and second["played_ms"] > 0  # a new bridge, a new session
    assert first_links == 1 and ignored >= 1001
    assert not errors


def test_a_device_that_vanishes_without_a_last_will_ends_its_session_and_is_forgotten(
    broker: LoopbackBroker,
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running_bridge(broker, device_idle_timeout_s=0.5) as bridge:
            listener = make_client(broker_settings(broker.url), "listener")
            async with listener:
                await listener.subscribe(TOPICS.device("robot1", Channel.EVENTS), 1)
                await publish_all(
                    broker,
                    [
                        (TOPICS.device("robot1", Channel.CONFIG), b'{"sample_rate_hz": 16000}', False),
                        (TOPICS.device("robot1", Channel.CONTROL), b'{"type": "start"}', False),
                    ],
                )  # and it is gone, with no last will
                await until(lambda: "robot1" in bridge.links, 5, "the device's link")
                link = bridge.links["robot1"]
                await until(lambda: link.session is not None, 5, "its session")
                await until(lambda: link.session is None, 5, "its session to end")
                await until(lambda: "robot1" not in bridge.links, 5, "its link to be forgotten")
                events: list[dict[str, Any]] = []
                async with asyncio.timeout(5):
                    async for message in listener.messages:
                        events.append(json.loads(message.payload))  # type: ignore[arg-type]
                        if events[-1].get("state") == "stopped":
                            break
            return events

    events = run(scenario())
    assert events[-1]["reason"] == "idle"


def test_a_flooding_device_is_rate_limited_and_another_keeps_every_frame(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with (
            running_bridge(broker, device_messages_per_s=100.0, device_burst_messages=100) as bridge,
            device(broker, "good") as good,
        ):
            good.control("start")
            await good.wait_type("session", 5)
            speaking = asyncio.create_task(answered(good))
            flood = [(TOPICS.device("flood", Channel.CONTROL), b'{"type": "stats"}', False)] * 2000
            await publish_all(broker, flood)
            done = await speaking
            good.control("stats")
            stats = await good.wait_type("stats", 5)
            await until(lambda: "flood" in bridge.links, 5, "the flood")
            flooded = bridge.links["flood"]
            return done, stats, dict(flooded.bad), good.of_type("error")

    done, stats, flood_bad, errors = run(scenario())
    assert done["played_ms"] > 0 and not errors
    inbound = stats["audio_in"]
    assert inbound["frames"] == inbound["delivered"] > 80 and inbound["lost"] == 0
    assert stats["bad_messages"] == {}
    assert flood_bad["rate_limited"] >= 1000


def test_a_config_without_the_devices_token_gets_unauthorized_and_no_session(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        tokens = {"robot1": "s3cret-robot1"}
        async with running_bridge(broker, device_tokens=tokens) as bridge:
            async with device(broker, "robot1", token="guess") as impostor:
                impostor.control("start")
                refused = await impostor.wait_type("error", 5, code="unauthorized")
                await asyncio.sleep(0.3)
                no_session = bridge.links["robot1"].session is None and not impostor.of_type("session")
            async with device(broker, "stranger") as stranger:
                stranger.control("start")
                await stranger.wait_type("error", 5, code="unauthorized")
            async with device(broker, "robot1", token="s3cret-robot1") as dev:
                dev.control("start")
                started = await dev.wait_type("session", 5, state="started")
            return refused, no_session, started

    refused, no_session, started = run(scenario())
    assert no_session and "token" in refused["message"] and "s3cret" not in refused["message"]
    assert started["session_id"] == "robot1-1"


def test_the_bridge_never_logs_its_broker_password(tmp_path: Path) -> None:
    passwd = shutil.which("mosquitto_passwd")
    assert passwd, "mosquitto_passwd comes with mosquitto"
    password_file = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(password_file), "bridge", "hunter2"], check=True, capture_output=True)
    password_file.chmod(0o600)
    log = io.StringIO()
    configure_logging("DEBUG", stream=log)
    with LoopbackBroker(tmp_path / "broker", binary=ensure_mosquitto(), password_file=password_file) as broker:
        settings = broker_settings(broker.url.replace("//", "//bridge:hunter2@"))

        async def scenario() -> None:
            async with running_bridge(broker, settings=settings):
                broker.restart(down_s=0.3)  # connection lost, retried and made again: all logged
                await asyncio.sleep(1.5)

        run(scenario())
    assert "mqtt_reconnected" in log.getvalue()
    assert "hunter2" not in log.getvalue()


def test_audio_without_a_frame_is_refused_not_counted_as_speech(broker: LoopbackBroker) -> None:
    """A stranger's frames for the good device's id carry a wrong header: refused, and the device talks on."""

    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker) as bridge, device(broker, "good") as good:
            good.control("start")
            await good.wait_type("session", 5)
            speaking = asyncio.create_task(answered(good))
            junk = [(TOPICS.device("good", Channel.AUDIO_IN), b"XX" + bytes(966), False)] * 50
            junk += [(TOPICS.device("good", Channel.CONTROL), encode_json({"type": "stats", "x": 1}), False)] * 5
            await publish_all(broker, junk)
            done = await speaking
            return done, dict(bridge.links["good"].bad), SHORT_REPLY in json.dumps(good.of_type("bot_text"))

    done, bad, replied = run(scenario())
    assert done["played_ms"] > 0 and replied
    assert bad == {"unknown_format": 50, "bad_control": 5}


def documented_acl() -> str:
    """The mosquitto ACL that docs/mqtt.md recommends, exactly as printed there."""
    docs = (REPO / "docs" / "mqtt.md").read_text()
    blocks = docs.split("```")[1::2]
    (acl,) = [block for block in blocks if block.lstrip("\n").startswith("# duplexer mqtt: the bridge")]
    return acl.lstrip("\n")


def test_the_documented_acl_lets_the_bridge_work_and_keeps_each_device_to_its_own_topics(tmp_path: Path) -> None:
    passwd = shutil.which("mosquitto_passwd")
    assert passwd, "mosquitto_passwd comes with mosquitto"
    password_file, acl_file = tmp_path / "passwd", tmp_path / "duplexer.acl"
    users = {"bridge": "bridge-secret", "robot1": "robot1-secret", "robot2": "robot2-secret"}
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([passwd, *create, "-b", str(password_file), user, password], check=True, capture_output=True)
    password_file.chmod(0o600)
    acl_file.write_text(documented_acl())
    broker = LoopbackBroker(
        tmp_path / "broker", binary=ensure_mosquitto(), password_file=password_file, acl_file=acl_file
    )

    def login(user: str) -> Any:
        return broker_settings(broker.url, username=user, password=users[user])

    async def scenario() -> tuple[Any, ...]:
        async with (
            running_bridge(broker, settings=login("bridge")) as bridge,
            device(broker, "robot1", settings=login("robot1")) as dev,
        ):
            dev.control("start")
            await dev.wait_type("session", 5, state="started")
            speaking = asyncio.create_task(answered(dev))
            # robot2 tries robot1's topics, and a device that is not its own, and to listen in.
            intruder = make_client(login("robot2"), "robot2-intruder")
            overheard: list[str] = []
            async with intruder:
                await intruder.subscribe(TOPICS.device("robot1", Channel.EVENTS), 1)
                await intruder.subscribe(TOPICS.device("robot1", Channel.CONFIG), 1)
                for target, payload in [
                    (TOPICS.device("robot1", Channel.CONTROL), b'{"type": "stop"}'),
                    (TOPICS.device("robot1", Channel.CONFIG), b'{"sample_rate_hz": 8000}'),
                    (TOPICS.device("robot1", Channel.AUDIO_IN), b"junk"),
                    (TOPICS.device("robot3", Channel.CONTROL), b'{"type": "start"}'),
                    (TOPICS.device("robot1", Channel.EVENTS), b'{"type": "session", "state": "stopped"}'),
                ]:
                    await intruder.publish(target, payload, qos=1)
                # robot2 on its own topics is heard: its link appears.
                await intruder.publish(TOPICS.device("robot2", Channel.CONTROL), b'{"type": "stats"}', qos=1)
                await until(lambda: "robot2" in bridge.links, 5, "robot2's own message")

                async def listen() -> None:
                    async for message in intruder.messages:
                        overheard.append(str(message.topic))

                listener = asyncio.create_task(listen())
                done = await speaking
                listener.cancel()
            link = bridge.links["robot1"]
            return done, dict(link.bad), link.fmt, set(bridge.links), overheard, dev.of_type("session")

    with broker:
        done, bad, fmt, links, overheard, sessions = run(scenario())

        async def anonymous_login() -> bool:
            try:
                async with make_client(broker_settings(broker.url), "anonymous"):
                    return True
            except Exception:
                return False

        anonymous_admitted = run(anonymous_login())
    assert done["played_ms"] > 0  # the bridge works under the ACL
    assert [s["state"] for s in sessions] == ["started"]  # robot2's stop never reached the bridge
    assert bad == {} and fmt is not None and fmt.sample_rate_hz == 24_000
    assert links == {"robot1", "robot2"}  # robot3 was never heard of
    assert overheard == []  # robot2 hears neither robot1's events nor its config (and token)
    assert not anonymous_admitted


def test_a_megabyte_message_never_reaches_the_bridge_and_long_bad_ids_cost_it_little(broker: LoopbackBroker) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with running_bridge(broker, error_repeat_s=0.0) as bridge, device(broker, "good") as good:
            good.control("start")
            await good.wait_type("session", 5)
            stop = b'{"type": "stop", "pad": "' + b"x" * 1_000_000 + b'"}'
            messages = [(TOPICS.device("good", Channel.CONTROL), stop, False)]  # over the bridge's packet size
            messages += [(f"{TOPICS.prefix}/{'x' * 1000 * i}/control", b"{}", False) for i in range(1, 30)]
            messages.append((TOPICS.device("other", Channel.CONTROL), b"{" + b" " * 40_000 + b"}", False))
            await publish_all(broker, messages)
            await until(lambda: "other" in bridge.links and bool(bridge.links["other"].bad), 5, "the 40 KB control")
            await asyncio.sleep(0.2)
            longest_key = max(len(device_id) for device_id, _ in bridge.errors._last)
            bad = {device_id: dict(link.bad) for device_id, link in bridge.links.items()}
            return good.of_type("session"), bridge.counters, bad["other"], bad["good"], longest_key

    sessions, counters, other_bad, good_bad, longest_key = run(scenario())
    assert [s["state"] for s in sessions] == ["started"]
    assert good_bad == {}  # the megabyte stop was dropped by the broker: the bridge never read it
    assert counters["connections"] == 1 and counters["refused_bad_device_id"] == 29
    assert other_bad == {"oversized": 1}
    assert longest_key <= 80


@pytest.mark.parametrize("given", ["\ud800", "tok\udfff", "\udcff\ud800x"])
def test_a_token_that_is_not_encodable_text_is_refused_not_an_internal_error(given: str) -> None:
    """JSON can carry a lone surrogate ("\\ud800"); such a token does not match, and raises nothing
    (it gave UnicodeEncodeError, which the bridge reported as an internal bug)."""
    assert token_matches({"robot1": "tok"}, "robot1", given) is False
    assert token_matches({"robot1": "\ud800"}, "robot1", "\ud800") is True  # the same text still matches
