"""The WebRTC server end to end against a pure-Python aiortc caller, two peers in one process.

Most tests run scripted engines (EnergyVad on the real recorded speech, a canned
transcript, a scripted LLM and a humming TTS); one slow test runs the real models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from duplexer.cli import main as cli_main
from duplexer.protocols.engine_factory import real_engines
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_client import SignallingError, WebRtcCaller
from duplexer.protocols.webrtc_messages import order_problems
from duplexer.runtime.events import FRAME_MS
from duplexer.runtime.logging import configure_logging
from tests.conftest import REPO, run
from tests.serve_http import (
    QUESTION,
    REPLY,
    get,
    offer_sdp,
    post,
    serving,
    short_replies,
    speech,
    types,
)


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> Iterator[None]:
    """`duplexer serve` points the structured log at sys.stderr, which capsys closes after the test."""
    yield
    configure_logging(stream=sys.__stderr__)


# ------------------------------------------------------------------ conversation


def test_a_spoken_question_gets_bot_audio_back_and_data_channel_events_in_order() -> None:
    pcm, rate = speech()

    async def scenario() -> None:
        async with serving() as server:
            caller = WebRtcCaller(server.url)
            session_id = await caller.connect()
            onset_s = await caller.mic.say(pcm, rate)
            metrics = await caller.wait_for(lambda m: m["type"] == "metrics", 20)
            await caller.wait_for(lambda m: m["type"] == "history" and m["role"] == "assistant", 5)
            await asyncio.sleep(0.3)  # the last frames of the reply in flight
            summary = server.calls[session_id].summary()
            await caller.close()

        messages = caller.messages
        assert order_problems(messages) == []
        assert messages[0]["session_id"] == session_id
        kinds = set(types(messages))
        assert {"hello", "state", "speech", "transcript", "reply", "bot_text", "playout", "history"} <= kinds
        finals = [m for m in messages if m["type"] == "transcript" and m["final"]]
        assert [m["text"] for m in finals] == [QUESTION]
        assert any(m["type"] == "bot_text" and m["final"] and m["text"] == REPLY for m in messages)
        states = [m["new"] for m in messages if m["type"] == "state"]
        assert "UserSpeaking" in states and "BotReplying" in states and states[-1] == "Silence"
        assert metrics["outcome"] == "done"
        assert 0 < metrics["response_latency_ms"] < 3000
        assert metrics["llm_first_token_ms"] >= 200  # the scripted LLM's time to first token
        # the bot's humming came back over Opus: about as long as the reply played, after the question
        first_loud = caller.audio.first_loud_s(after_s=onset_s)
        assert first_loud is not None and first_loud - onset_s > 1.0
        loud_ms = caller.audio.loud_frames() * FRAME_MS
        assert abs(loud_ms - metrics["played_ms"]) <= 200
        assert summary["inbound"]["pipeline_frames"] > 50
        assert summary["outbound"]["overflow_frames"] == 0
        assert summary["outbound"]["max_queued_frames"] <= 2

    run(scenario())


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("this is not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "offer"}', '"sdp" is missing'),
        ('{"type": "answer", "sdp": "v=0"}', '"type" must be "offer"'),
        ('{"type": "offer", "sdp": "hello"}', "malformed SDP"),
        (
            '{"type": "offer", "sdp": "v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 96\\r\\na=rtpmap:zz opus/48000/2\\r\\n"}',
            "SDP",
        ),
    ],
    ids=["not-json", "not-object", "no-sdp", "not-offer", "garbage-sdp", "broken-sdp"],
)
def test_a_malformed_offer_gets_400_with_a_clear_message(body: str, words: str) -> None:
    async def scenario() -> None:
        async with serving() as server:
            status, _, data = await post(f"{server.url}/offer", body)
            assert status == 400
            assert words in data["error"]
            assert not server.calls

    run(scenario())


def test_offers_without_audio_or_with_broken_ice_get_400() -> None:
    async def scenario() -> None:
        async with serving() as server:
            no_audio = await offer_sdp(audio=False)
            status, _, data = await post(f"{server.url}/offer", json.dumps({"type": "offer", "sdp": no_audio}))
            assert status == 400 and "no audio section" in data["error"]
            good = await offer_sdp()
            no_ice = "\r\n".join(line for line in good.split("\r\n") if not line.startswith("a=ice-"))
            status, _, data = await post(f"{server.url}/offer", json.dumps({"type": "offer", "sdp": no_ice}))
            assert status == 400 and "ice-ufrag" in data["error"]
            no_dtls = "\r\n".join(line for line in good.split("\r\n") if not line.startswith("a=fingerprint"))
            status, _, data = await post(f"{server.url}/offer", json.dumps({"type": "offer", "sdp": no_dtls}))
            assert status == 400 and "fingerprint" in data["error"]
            status, _, data = await post(f"{server.url}/calls/nope/client-log", "{}")
            assert status == 404
            huge = json.dumps({"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 60_000})
            status, _, data = await post(f"{server.url}/offer", huge)
            assert status == 413 and "over" in data["error"]
            assert not server.calls

    run(scenario())


def test_a_missing_or_wrong_bearer_token_gets_401_and_the_right_one_calls() -> None:
    async def scenario() -> None:
        async with serving(token="s3cret") as server:
            body = json.dumps({"type": "offer", "sdp": await offer_sdp()})
            status, headers, data = await post(f"{server.url}/offer", body)
            assert status == 401 and "missing bearer token" in data["error"]
            assert headers["WWW-Authenticate"].startswith("Bearer")
            status, _, data = await post(f"{server.url}/offer", body, token="guess")
            assert status == 401 and "wrong bearer token" in data["error"]
            assert (await get(f"{server.url}/config"))[0] == 401
            assert (await get(f"{server.url}/calls"))[0] == 401
            assert (await get(f"{server.url}/health"))[0] == 200
            assert (await get(f"{server.url}/"))[0] == 200  # the page itself asks for the token
            assert not server.calls
            caller = WebRtcCaller(server.url, token="s3cret")
            await caller.connect()
            assert len(server.calls) == 1
            await caller.hangup()
            with pytest.raises(SignallingError) as refused:
                await WebRtcCaller(server.url, token="guess").connect()
            assert refused.value.status == 401

    run(scenario())


def test_max_sessions_is_enforced_with_503_and_a_freed_slot_is_reused() -> None:
    async def scenario() -> None:
        async with serving(max_sessions=1) as server:
            first = WebRtcCaller(server.url)
            await first.connect()
            body = json.dumps({"type": "offer", "sdp": await offer_sdp()})
            status, headers, data = await post(f"{server.url}/offer", body)
            assert status == 503 and "limit of 1" in data["error"]
            assert headers["Retry-After"]
            await first.hangup()
            second = WebRtcCaller(server.url)
            await second.connect()
            assert len(server.calls) == 1
            await second.close()

    run(scenario())


# ------------------------------------------------------------------ teardown


def _decoder_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.endswith("-decoder") and thread.is_alive())


def test_every_way_a_call_ends_tears_its_session_down_with_nothing_left_running() -> None:
    async def scenario() -> None:
        before = set(asyncio.all_tasks())
        async with serving(connect_timeout_s=1.5, media_timeout_s=1.5) as server:
            ended: dict[str, str] = {}
            callers: list[WebRtcCaller] = []

            async def connected() -> tuple[WebRtcCaller, str]:
                caller = WebRtcCaller(server.url)
                callers.append(caller)
                session_id = await caller.connect()
                await caller.wait_for(lambda m: m["type"] == "hello", 5)
                assert len(server.calls[session_id].session.supervisor.tasks) >= 8  # actors and the mic pump
                return caller, session_id

            async def until_closed(session_id: str, timeout_s: float = 8.0) -> str:
                async with asyncio.timeout(timeout_s):
                    while session_id in server.calls:
                        await asyncio.sleep(0.05)
                call = server.recent[session_id]
                assert call.session.supervisor.tasks == []
                return str(call.close_reason)

            caller, sid = await connected()  # the caller closes its peer connection (tab closed)
            await caller.close()
            ended["peer_closed"] = await until_closed(sid)

            caller, sid = await connected()  # the page's hangup request
            await caller.hangup()
            ended["hangup"] = await until_closed(sid)

            caller, sid = await connected()  # hangup on the data channel
            caller.send({"type": "hangup"})
            ended["channel_hangup"] = await until_closed(sid)
            await caller.close()

            caller, sid = await connected()  # the caller vanishes: its audio stops, nothing is closed
            caller.mic.stop()
            ended["vanished"] = await until_closed(sid)
            await caller.close()

            stranger = RTCPeerConnection()  # offers, then never connects (ICE never completes)
            from aiortc.mediastreams import AudioStreamTrack

            stranger.addTrack(AudioStreamTrack())
            await stranger.setLocalDescription(await stranger.createOffer())
            assert stranger.localDescription is not None
            body = json.dumps({"type": "offer", "sdp": stranger.localDescription.sdp})
            await stranger.close()
            status, _, data = await post(f"{server.url}/offer", body)
            assert status == 200
            ended["never_connected"] = await until_closed(data["session_id"])

            assert ended["peer_closed"] in {"connection_closed", "data_channel_closed", "remote_track_ended"}
            assert ended["hangup"] == "hangup"
            assert ended["channel_hangup"] == "hangup"
            assert ended["vanished"] == "media_timeout"
            assert ended["never_connected"] in {"connect_timeout", "ice_failed", "connection_failed"}
            assert not server.calls
            status, health = await get(f"{server.url}/health")
            assert health["sessions"] == 0
        await asyncio.sleep(0.2)
        leaked = [t for t in set(asyncio.all_tasks()) - before if not t.done()]
        assert leaked == []
        assert _decoder_threads() == 0

    run(scenario(), timeout_s=90)


# ------------------------------------------------------------------ the page and the command


def test_the_page_and_its_assets_are_served_and_nothing_else_is() -> None:
    async def scenario() -> None:
        async with serving() as server:
            status, html = await get(f"{server.url}/")
            assert status == 200 and "/static/app.js" in html and "/static/style.css" in html
            status, js = await get(f"{server.url}/static/app.js")
            assert status == 200 and "createDataChannel" in js
            assert (await get(f"{server.url}/static/style.css"))[0] == 200
            assert (await get(f"{server.url}/static/webrtc_server.py"))[0] == 404
            assert (await get(f"{server.url}/static/..%2Fwebrtc_server.py"))[0] == 404
            status, config = await get(f"{server.url}/config")
            assert status == 200 and config["ice_servers"] == []

    run(scenario())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-sessions", "0"], "max sessions"),
        (["--port", "70000"], "port 70000"),
        (["--ice-server", "http://example.org"], "must start with one of stun:"),
        (["--media-timeout", "0"], "positive"),
    ],
)
def test_serve_refuses_bad_options_with_exit_code_2(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["serve", "--engines", "scripted", *args]) == 2
    assert words in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_duplexer_serve_listens_answers_health_checks_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DUPLEXER_TOKEN": "from-env"}
    process = subprocess.Popen(
        [sys.executable, "-m", "duplexer.cli", "serve", "--engines", "scripted", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("w"),
    )

    async def probe() -> tuple[int, int]:
        for _ in range(150):
            with contextlib.suppress(aiohttp.ClientError):
                health = await get(f"http://127.0.0.1:{port}/health")
                config = await get(f"http://127.0.0.1:{port}/config")
                return health[0], config[0]
            await asyncio.sleep(0.1)
        raise AssertionError(f"duplexer serve did not listen: {(tmp_path / 'serve.log').read_text()}")

    try:
        health_status, config_status = run(probe(), timeout_s=30)
        assert health_status == 200
        assert config_status == 401  # the token came from DUPLEXER_TOKEN
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------------------ real models


@pytest.mark.slow
def test_real_models_answer_a_spoken_question_over_webrtc() -> None:
    pcm, rate = speech()

    async def scenario() -> None:
        async with serving(engines=real_engines()) as server:
            caller = WebRtcCaller(server.url)
            await caller.connect(timeout_s=60)
            onset_s = await caller.mic.say(pcm, rate)
            metrics = await caller.wait_for(lambda m: m["type"] == "metrics", 90)
            await caller.close()
        messages = caller.messages
        assert order_problems(messages) == []
        heard = " ".join(m["text"] for m in messages if m["type"] == "transcript" and m["final"]).lower()
        assert "basketball" in heard
        replies = [m["text"] for m in messages if m["type"] == "bot_text" and m["final"]]
        assert replies and any(text.strip() for text in replies)
        assert metrics["response_latency_ms"] is not None and metrics["response_latency_ms"] > 0
        first_loud = caller.audio.first_loud_s(after_s=onset_s)
        assert first_loud is not None
        assert caller.audio.loud_frames() >= 25  # at least half a second of Piper's voice came back

    run(scenario(), timeout_s=180)


def test_a_call_closed_as_it_connects_still_finishes_closing() -> None:
    """Python 3.11's wait_for drops a cancel that lands as its wait completes: the watchdog, cancelled
    by the close in the same loop turn as the connection, must not go on watching and hold the close."""
    from duplexer.protocols.webrtc_call import Call

    async def scenario() -> bool:
        call = Call(CallSettings(), short_replies())
        call._watchdog = asyncio.create_task(call._watch())
        await asyncio.sleep(0)  # the watchdog waits for the connection
        call.connected.set()
        call.request_close("test")
        await asyncio.wait_for(call.closed.wait(), 5.0)
        return call._watchdog.done()

    assert asyncio.run(scenario())
