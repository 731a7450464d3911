"""Fuzzing the MQTT surface: whatever a client publishes gets a documented error code, never ``internal``.

Hypothesis writes config, control and status messages with junk fields, huge and
non-finite numbers, wrong types and deep nesting, random bytes, and audio frames
with bad headers. The parsers get many of them (fast); a bounded number is
published to a real bridge on a real mosquitto while a good device talks on the
same bridge, and the good device must keep every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import fields
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.policies.controller import PolicyParams
from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.protocols.mqtt_connection import broker_settings, make_client
from duplexer.protocols.mqtt_link import policy_with
from duplexer.protocols.mqtt_topics import (
    AUDIO_HEADER,
    AUDIO_MAGIC,
    AUDIO_VERSION,
    Channel,
    ControlType,
    ErrorCode,
    Topics,
    WireError,
    parse_config,
    parse_control,
    parse_status,
    unpack_audio,
)
from tests.conftest import REPO, fuzz_settings
from tests.mqtt_broker import device, running_bridge, speech

pytestmark = pytest.mark.fuzz

T = TypeVar("T")
TOPICS = Topics()
MAX_MESSAGE_CHARS = 600
"""An error message is one line a person reads: it names the field, it does not echo the payload."""


def documented_codes() -> set[str]:
    """The error codes of the table in docs/mqtt.md's "Bad input" section."""
    docs = (REPO / "docs" / "mqtt.md").read_text()
    section = docs.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


DOCUMENTED = documented_codes() - {ErrorCode.INTERNAL.value}


def test_the_docs_name_every_error_code() -> None:
    assert DOCUMENTED | {ErrorCode.INTERNAL.value} == {code.value for code in ErrorCode}


# ------------------------------------------------------------------ strategies


class Raw(str):
    """JSON text put in as it is: numbers ``json.dumps`` would not write (``1e400``, 400 digits)."""


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{to_json(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(item) for item in value) + "]"
    return json.dumps(value)


numbers = st.one_of(
    st.integers(-100_000, 100_000),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e400", "-1e400", "1E+99999", "9" * 400, "-" + "9" * 40 + ".5", "0." + "1" * 400]).map(Raw),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=40), st.text(min_size=500, max_size=2000))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=12,
)
junk_fields = st.dictionaries(st.text(max_size=30) | st.text(min_size=200, max_size=2000), json_values, max_size=5)


@st.composite
def deep(draw: st.DrawFn) -> str:
    """Nesting from just past the limit to far beyond Python's recursion limit."""
    depth = draw(st.integers(30, 3000))
    opener, leaf, closer = draw(st.sampled_from([("[", "1", "]"), ('{"a":', "1", "}"), ('{"policy":[', "0", "]}")]))
    return opener * depth + leaf + closer * depth


policy_names = st.sampled_from([f.name for f in fields(PolicyParams)]) | st.text(max_size=80) | st.just("\n")
configs = st.builds(
    lambda known, junk: {**known, **junk},
    st.fixed_dictionaries(
        {},
        optional={
            "encoding": st.just("pcm16le") | json_values,
            "sample_rate_hz": st.sampled_from([8000, 16_000, 22_050, 24_000, 48_000]) | numbers | json_values,
            "channels": st.just(1) | numbers | json_values,
            "frame_ms": st.sampled_from([10, 20, 30, 100]) | numbers | json_values,
            "token": st.text(max_size=300) | json_values,
        },
    ),
    junk_fields | st.just({}),
)
controls = st.builds(
    lambda known, junk: {**known, **junk},
    st.fixed_dictionaries(
        {"type": st.sampled_from([t.value for t in ControlType]) | json_values},
        optional={
            "policy": st.dictionaries(policy_names, numbers | st.booleans() | json_values, max_size=5) | json_values
        },
    ),
    st.just({}) | junk_fields,
)
statuses = st.sampled_from([b"online", b"offline", b" OFFLINE ", b""]) | st.builds(
    lambda state: to_json({"state": state}).encode(), st.sampled_from(["online", "offline"]) | json_values
)
json_payloads = st.one_of(
    configs.map(to_json),
    controls.map(to_json),
    json_values.map(to_json),
    deep(),
).map(str.encode)
any_payload = st.one_of(json_payloads, statuses, st.binary(max_size=200), st.text(max_size=200).map(str.encode))


@st.composite
def audio_frames(draw: st.DrawFn) -> bytes:
    """A frame with a right or wrong header, and PCM of a right or wrong length."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=12))  # shorter than, or about, a header
    magic = draw(st.just(AUDIO_MAGIC) | st.binary(min_size=2, max_size=2))
    version = draw(st.just(AUDIO_VERSION) | st.integers(0, 255))
    header = AUDIO_HEADER.pack(magic, version, draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1)))
    size = draw(st.sampled_from([320, 640, 960]) | st.integers(0, 40_000))
    return header + bytes(size)


def check_refusal(exc: WireError) -> None:
    assert exc.code.value in DOCUMENTED, exc
    assert exc.message and "\n" not in exc.message and len(exc.message) <= MAX_MESSAGE_CHARS, exc.message[:200]


# ------------------------------------------------------------------ the parsers


@fuzz_settings()
@given(payload=any_payload)
def test_every_parser_accepts_or_refuses_with_a_documented_code(payload: bytes) -> None:
    for parse in (parse_config, parse_control, parse_status, unpack_audio):
        try:
            parse(payload)
        except WireError as exc:
            check_refusal(exc)


@fuzz_settings()
@given(control=controls)
def test_a_control_and_its_policy_are_accepted_or_refused_with_a_documented_code(control: dict[str, Any]) -> None:
    try:
        parsed = parse_control(to_json(control).encode())
        if parsed.policy is not None:
            policy_with(PolicyParams(), parsed.policy)  # what the bridge does next with it
    except WireError as exc:
        check_refusal(exc)


@fuzz_settings()
@given(config=configs, frame=audio_frames())
def test_a_config_and_a_frame_are_accepted_or_refused_with_a_documented_code(
    config: dict[str, Any], frame: bytes
) -> None:
    try:
        fmt = parse_config(to_json(config).encode())
        _, pcm = unpack_audio(frame)
        fmt.check_frame(pcm)
    except WireError as exc:
        check_refusal(exc)


# ------------------------------------------------------------------ a real bridge

FUZZ_DEVICES = ("fuzz1", "fuzz2", "fuzz3")
"""The few ids fuzzed messages go to (a session each at most), plus ids that are not valid."""
SENTINEL = "sentinel"
QUESTION = "basketball_short_female_en-US-Wavenet-E.wav"

device_ids = st.sampled_from(FUZZ_DEVICES) | st.sampled_from(["two words", "_bridge", "x" * 65, "-lead", "é"])
channels = st.sampled_from([Channel.CONFIG, Channel.CONTROL, Channel.STATUS, Channel.AUDIO_IN])


@st.composite
def published(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """One message a hostile client publishes: a topic of some device, any payload, maybe retained."""
    channel = draw(channels)
    payload = draw(audio_frames() if channel is Channel.AUDIO_IN and draw(st.booleans()) else any_payload)
    return TOPICS.device(draw(device_ids), channel), payload, draw(st.booleans())


class LiveBridge:
    """A bridge, a good device and a hostile client on a real broker, run by an event loop in a thread,
    so that every hypothesis example publishes into the same bridge while the good device talks."""

    def __init__(self, broker: LoopbackBroker) -> None:
        self.broker = broker
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-bridge", daemon=True)
        self.stack = contextlib.AsyncExitStack()
        self.errors: list[dict[str, Any]] = []
        self.sentinels = 0
        self.examples = 0
        self.messages = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def __enter__(self) -> LiveBridge:
        self.thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.call(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        self.bridge = await self.stack.enter_async_context(running_bridge(self.broker, error_repeat_s=0.0))
        self.good = await self.stack.enter_async_context(device(self.broker, "good"))
        self.hostile = await self.stack.enter_async_context(make_client(broker_settings(self.broker.url), "hostile"))
        await self.hostile.subscribe(f"{TOPICS.prefix}/+/events", 1)
        reader = asyncio.create_task(self._read())
        self.stack.callback(reader.cancel)
        self.good.control("start")
        await self.good.wait_type("session", 5)
        pcm, _ = speech(QUESTION)
        talking = asyncio.create_task(self._talk(pcm))
        self.stack.callback(talking.cancel)

    async def _talk(self, pcm: bytes) -> None:
        await self.good.stream(pcm)
        await self.good.silence(600_000)  # a quiet room, until the test ends

    async def _read(self) -> None:
        async for message in self.hostile.messages:
            event = json.loads(message.payload)  # type: ignore[arg-type]
            if str(message.topic) == TOPICS.device(SENTINEL, Channel.EVENTS):
                self.sentinels += event.get("type") == "stats"
            elif event.get("type") == "error":
                self.errors.append(event)

    async def publish(self, batch: list[tuple[str, bytes, bool]]) -> None:
        """Publish a batch, then a sentinel, and wait for the sentinel's answer: the batch was handled."""
        for topic, payload, retain in batch:
            await self.hostile.publish(topic, payload, qos=1, retain=retain)
        expected = self.sentinels + 1
        await self.hostile.publish(TOPICS.device(SENTINEL, Channel.CONTROL), b'{"type": "stats"}', qos=1)
        async with asyncio.timeout(10):
            while self.sentinels < expected:
                await asyncio.sleep(0.005)
        self.examples += 1
        self.messages += len(batch)

    async def finish(self) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        """The good device's reply and stats, and what the bridge counted for everyone."""
        done = await self.good.wait_type("playout_done", 20)
        mark = len(self.good.events)
        self.good.control("stats")
        stats = await self.good.wait_type("stats", 5, start=mark)
        counted = {device_id: dict(link.bad) for device_id, link in self.bridge.links.items()}
        counted["_bridge"] = dict(self.bridge.counters)
        return done, [e for e in self.good.events if e.get("type") == "error"], {"stats": stats, **counted}


def test_a_real_bridge_answers_fuzzed_messages_with_documented_codes_and_a_good_device_keeps_its_frames(
    broker: LoopbackBroker,
) -> None:
    with LiveBridge(broker) as live:

        @fuzz_settings()
        @given(batch=st.lists(published(), min_size=1, max_size=8))
        def publish(batch: list[tuple[str, bytes, bool]]) -> None:
            live.call(live.publish(batch))

        publish()
        done, good_errors, counted = live.call(live.finish(), 40)
        errors = list(live.errors)

    async def replayed() -> tuple[dict[str, int], set[str]]:
        """A bridge started now gets every retained message the fuzzing left: none may make a device."""
        async with running_bridge(broker) as bridge:
            await asyncio.sleep(0.5)
            return dict(bridge.counters), set(bridge.links)

    replay_counters, replay_links = asyncio.run(replayed())
    codes = Counter(str(e.get("code")) for e in errors)
    print(f"fuzzed the live bridge with {live.messages} messages in {live.examples} examples; errors: {codes}")
    assert live.examples > 0 and errors  # the hostile client hears its refusals
    assert [e for e in errors if e.get("source") != "mqtt" or e.get("code") not in DOCUMENTED] == []
    stats = counted.pop("stats")
    bridge_counters = counted.pop("_bridge")
    assert all(set(bad) <= DOCUMENTED for bad in counted.values()), counted
    refused = {key.removeprefix("refused_") for key in bridge_counters if key.startswith("refused_")}
    assert refused <= DOCUMENTED
    # The good device lost nothing: every frame delivered in order, no error, and its answer played.
    assert done["played_ms"] > 0 and good_errors == []
    inbound = stats["audio_in"]
    assert inbound["frames"] == inbound["delivered"] > 80
    assert inbound["lost"] == inbound["late"] == inbound["resets"] == 0
    assert stats["bad_messages"] == {}
    assert replay_links == set() and replay_counters["retained_ignored"] > 0
