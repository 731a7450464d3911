"""`duplexer serve` and `duplexer mqtt` with ``--executor ray``, on a real local Ray instance.

A WebRTC call through the real server and the project's aiortc caller, and an MQTT
device through a real mosquitto, each with scripted engines and the default
"session" placement: the controller, context, LLM and TTS run in a Ray session
host, VAD, ASR and playout beside the transport. The executors are made from the
commands' own parsed arguments, as the commands make them.

One Ray instance (``num_cpus=2``) serves the whole module: starting one takes several seconds.
"""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import replace
from typing import Any

import pytest

from duplexer.actors.controller import ControllerActor
from duplexer.actors.scripted import echo_reply
from duplexer.cli import build_parser
from duplexer.policies.controller import PolicyParams
from duplexer.protocols.engine_factory import scripted_engines
from duplexer.protocols.executor_cli import TransportExecutor, transport_executor
from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_client import WebRtcCaller
from duplexer.protocols.webrtc_messages import order_problems
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from duplexer.runtime.actor import ActorSpec
from duplexer.runtime.events import FRAME_MS, ErrorEvent, Event, MetricEvent, PolicyUpdate
from duplexer.runtime.executors import RaySessionMaker, local_session
from tests.conftest import run
from tests.mqtt_broker import SPEECH_DIR, device, running_bridge, until

ray = pytest.importorskip("ray")

from duplexer.runtime.placement import Placement  # noqa: E402
from duplexer.runtime.ray_executor import RayOptions, RaySession  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_instance")]

OPTIONS = RayOptions(num_cpus=2)
QUESTION_WAV = SPEECH_DIR / "basketball_short_female_en-US-Wavenet-E.wav"
QUESTION = "so do you play basketball"
REPLY = echo_reply(QUESTION)
"""Engine factories must be importable by Ray workers, so they come from the package (echo replies)."""


def speech() -> tuple[bytes, int]:
    if not QUESTION_WAV.exists():
        pytest.fail(f"test speech {QUESTION_WAV} is missing; the shared data folder should sit beside the repo")
    with wave.open(str(QUESTION_WAV), "rb") as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


def executor_for(command: list[str], engines: Any) -> TransportExecutor:
    """The executor a command line makes (Ray is already up, so it is reused, not started)."""
    args = build_parser().parse_args(command)
    return transport_executor(args, engines)


def session_hosts() -> list[str]:
    return sorted(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("duplexer:")
    )


async def no_session_hosts(timeout_s: float = 10.0) -> None:
    """Until no session host is alive (a killed Ray actor leaves the list within moments)."""
    await until(lambda: session_hosts() == [], timeout_s, f"session hosts to go: {session_hosts()}")


# ------------------------------------------------------------------ WebRTC


def _server(executor: TransportExecutor) -> WebRtcServer:
    call = CallSettings(debug=True, make_session=executor.make_session, media_timeout_s=30.0)
    return WebRtcServer(ServerConfig(port=0, call=call), executor.engines)


def test_a_webrtc_call_on_ray_gets_a_spoken_reply_and_leaves_no_session_host_behind() -> None:
    pcm, rate = speech()
    executor = executor_for(
        ["serve", "--engines", "scripted", "--executor", "ray"], scripted_engines(transcripts=(QUESTION,))
    )
    assert isinstance(executor.make_session, RaySessionMaker)
    assert executor.make_session.options.placement.describe() == "session=controller,context,llm,tts"

    async def scenario() -> None:
        server = _server(executor)
        await server.start()
        try:
            caller = WebRtcCaller(server.url)
            session_id = await caller.connect()  # the answer came once the session host was up
            call = server.calls[session_id]
            assert isinstance(call.session, RaySession)
            hosts = session_hosts()
            assert len(hosts) == 1 and hosts[0].startswith(f"duplexer:{session_id}:session:")
            driver_actors = {actor.name for actor in call.session.supervisor.actors}
            assert driver_actors == {"vad", "asr", "playout", "webrtc"}
            onset_s = await caller.mic.say(pcm, rate)
            metrics = await caller.wait_for(lambda m: m["type"] == "metrics", 30)
            await caller.wait_for(lambda m: m["type"] == "history" and m["role"] == "assistant", 5)
            await asyncio.sleep(0.3)  # the last frames of the reply in flight
            await caller.hangup()
            await until(lambda: session_id not in server.calls, 10, "the call to close")
            await no_session_hosts()
        finally:
            await server.stop()

        messages = caller.messages
        assert order_problems(messages) == []
        finals = [m["text"] for m in messages if m["type"] == "transcript" and m["final"]]
        assert finals == [QUESTION]
        assert any(m["type"] == "bot_text" and m["final"] and m["text"] == REPLY for m in messages)
        states = [m["new"] for m in messages if m["type"] == "state"]
        assert "UserSpeaking" in states and "BotReplying" in states
        assert metrics["outcome"] == "done"
        assert 0 < metrics["response_latency_ms"] < 3000
        # the bot's humming (rendered by TTS in the Ray host, played in the driver) came back over Opus
        first_loud = caller.audio.first_loud_s(after_s=onset_s)
        assert first_loud is not None and first_loud - onset_s > 1.0
        assert abs(caller.audio.loud_frames() * FRAME_MS - metrics["played_ms"]) <= 200

    run(scenario(), timeout_s=90)


def test_a_webrtc_call_whose_session_host_dies_ends_with_session_failed() -> None:
    executor = executor_for(["serve", "--engines", "scripted", "--executor", "ray"], scripted_engines())

    async def scenario() -> tuple[str | None, list[dict[str, Any]]]:
        server = _server(executor)
        await server.start()
        try:
            caller = WebRtcCaller(server.url)
            session_id = await caller.connect()
            call = server.calls[session_id]
            ray.kill(call.session.hosts["session"], no_restart=True)
            await caller.wait_for(lambda m: m["type"] == "bye", 20)
            try:
                await until(lambda: call.closed.is_set(), 10, "the call to close")
            except TimeoutError:
                where = io.StringIO()
                if call._close_task is not None:
                    call._close_task.print_stack(file=where)
                pytest.fail(f"the call did not finish closing; its close task:\n{where.getvalue()}")
            await caller.close()
            await no_session_hosts()
            return call.close_reason, caller.messages
        finally:
            await asyncio.wait_for(server.stop(), 15)

    reason, messages = run(scenario(), timeout_s=60)
    assert order_problems(messages) == []
    bye = messages[-1]
    assert reason == "session_failed" == bye["reason"]
    assert "session host 'session' died" in bye["detail"]
    errors = [m for m in messages if m["type"] == "error"]
    assert any("session host 'session' died" in m["message"] for m in errors), errors


def test_a_webrtc_call_with_the_llm_and_tts_shared_on_ray_serve_gets_a_spoken_reply() -> None:
    from duplexer.actors.ray_serve_engines import SERVE_APP_PREFIX, SharedEngines

    pcm, rate = speech()
    executor = executor_for(
        ["serve", "--engines", "scripted", "--executor", "ray", "--share", "llm,tts"],
        scripted_engines(transcripts=(QUESTION,)),
    )
    from ray import serve

    try:
        assert isinstance(executor.engines, SharedEngines) and executor.shared == ("llm", "tts")
        assert {SERVE_APP_PREFIX + "llm", SERVE_APP_PREFIX + "tts"} <= set(serve.status().applications)

        async def scenario() -> list[dict[str, Any]]:
            server = _server(executor)
            await server.start()
            try:
                caller = WebRtcCaller(server.url)
                await caller.connect()
                await caller.mic.say(pcm, rate)
                await caller.wait_for(lambda m: m["type"] == "metrics", 30)
                await caller.hangup()
                return caller.messages
            finally:
                await server.stop()

        messages = run(scenario(), timeout_s=60)
        assert any(m["type"] == "bot_text" and m["final"] and m["text"] == REPLY for m in messages)
        assert not [m for m in messages if m["type"] == "error"]
    finally:
        executor.close()
    assert not {SERVE_APP_PREFIX + "llm", SERVE_APP_PREFIX + "tts"} & set(serve.status().applications)


def test_llm_gpus_beyond_the_cluster_exits_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    from duplexer.cli import main

    argv = ["serve", "--engines", "scripted", "--executor", "ray", "--share", "llm", "--llm-gpus", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error: --llm-gpus 1: the Ray cluster has 0 GPU(s)") and "\n" not in err


# ------------------------------------------------------------------ MQTT


def test_an_mqtt_device_on_ray_gets_a_reply_and_live_policy_updates_reach_the_remote_controller(
    broker: LoopbackBroker,
) -> None:
    pcm, _ = speech()
    executor = executor_for(
        ["mqtt", "--broker", broker.url, "--all-devices", "--engines", "scripted", "--executor", "ray"],
        scripted_engines(transcripts=(QUESTION,), hum=False),
    )
    assert isinstance(executor.make_session, RaySessionMaker)
    end_of_turn_ms = 1400.0  # twice the default: a turn must not be answered sooner

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        async with (
            running_bridge(broker, executor.engines, make_session=executor.make_session) as bridge,
            device(broker, "robot1") as dev,
        ):
            dev.control("start")
            await dev.wait_type("session", 30, state="started")  # announced once the host is up
            session = bridge.links["robot1"].session
            assert isinstance(session, RaySession)
            assert "controller" not in {actor.name for actor in session.supervisor.actors}
            (host,) = session_hosts()
            dev.control("policy", policy={"end_of_turn_ms": end_of_turn_ms})
            applied = await dev.wait_type("metric", 10, name="policy_applied")
            await dev.stream(pcm)
            quiet = asyncio.create_task(dev.silence(8000.0))
            await dev.wait_type("playout_done", 20)
            quiet.cancel()
            dev.control("stop")
            await dev.wait_type("session", 10, state="stopped")
            await no_session_hosts()
            return applied, list(dev.events), host

    applied, events, host = run(scenario(), timeout_s=90)
    assert host.startswith("duplexer:robot1-1:session:")
    # the remote controller confirmed the new value
    assert applied["labels"] == {"end_of_turn_ms": str(end_of_turn_ms)} and applied["value"] == 1
    assert any(e["type"] == "bot_text" and e["text"] == REPLY for e in events)
    # ... and used it: the reply did not start until the longer end-of-turn silence had passed
    speech_end_ms = max(e["speech_end_ms"] for e in events if e["type"] == "speech_stop")
    replying_ms = next(e["ts_ms"] for e in events if e["type"] == "state" and e["new_state"] == "BotReplying")
    assert replying_ms - speech_end_ms >= end_of_turn_ms - FRAME_MS


# ------------------------------------------------------------------ live policy updates


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_policy_updates_reach_the_controller_on_either_executor_and_bad_ones_change_nothing(executor: str) -> None:
    maker = (
        local_session
        if executor == "local"
        else RaySessionMaker(replace(OPTIONS, placement=Placement.parse("session=controller")))
    )

    async def scenario() -> tuple[list[Event], PolicyParams | None]:
        session = maker(f"policy-{executor}", scripted_engines())
        seen = session.bus.subscribe("test", [MetricEvent, ErrorEvent], 100)
        session.place([ActorSpec.of(ControllerActor, PolicyParams())])
        try:
            await session.ready()
            updates = [
                (("end_of_turn_ms", 900.0), ("speculation", False)),
                (("pause_ms", 1000.0),),  # longer than end_of_turn_ms
                (("no_such_knob", 1),),
                (("pause_ms", 300.0),),
            ]
            events = []
            for overrides in updates:
                session.ctx.emit(PolicyUpdate, overrides=overrides)
                events.append(await asyncio.wait_for(seen.get(), 10))
            local = [a for a in session.supervisor.actors if isinstance(a, ControllerActor)]
            return events, local[0].controller.params if local else None
        finally:
            await session.stop()

    events, params = run(scenario(), timeout_s=60)
    first, pause, unknown, last = events
    assert isinstance(first, MetricEvent) and first.name == "policy_applied"
    assert dict(first.labels) == {"end_of_turn_ms": "900.0", "speculation": "False"}
    assert isinstance(pause, ErrorEvent) and "pause_ms" in pause.message
    assert isinstance(unknown, ErrorEvent) and "no_such_knob" in unknown.message
    assert not any(e.fatal for e in (pause, unknown) if isinstance(e, ErrorEvent))
    assert isinstance(last, MetricEvent) and dict(last.labels) == {"pause_ms": "300.0"}
    if params is not None:  # the local controller can be looked at: only the good updates changed it
        assert params == replace(PolicyParams(), end_of_turn_ms=900.0, speculation=False, pause_ms=300.0)
