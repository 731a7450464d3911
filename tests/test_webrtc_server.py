"""The WebRTC server end to end against a pure-Python aiortc caller, two peers in one process.

Most tests run scripted engines (EnergyVad on the real recorded speech, a canned
transcript, a scripted LLM and a humming TTS); one slow test runs the real models.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from duplexer.cli import main as cli_main
from duplexer.protocols.engine_factory import EngineFactory, real_engines, scripted_engines
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_client import SignallingError, WebRtcCaller
from duplexer.protocols.webrtc_messages import order_problems
from duplexer.protocols.webrtc_server import IceServer, ServerConfig, WebRtcServer
from duplexer.runtime.events import FRAME_MS
from duplexer.runtime.logging import configure_logging
from tests.conftest import REPO, SHARED, run
from tests.serve_http import json_error, raw_request

SPEECH = SHARED / "data" / "vap_phrases" / "audio" / "basketball_short_female_en-US-Wavenet-E.wav"
QUESTION = "so do you play basketball"
REPLY = "Sure, here is a short answer."


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> Iterator[None]:
    """`duplexer serve` points the structured log at sys.stderr, which capsys closes after the test."""
    yield
    configure_logging(stream=sys.__stderr__)


def speech() -> tuple[bytes, int]:
    if not SPEECH.exists():
        pytest.fail(f"test speech {SPEECH} is missing; the shared data folder should sit beside the repo")
    with wave.open(str(SPEECH), "rb") as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


def short_replies() -> EngineFactory:
    return scripted_engines(transcripts=(QUESTION,), reply_for=lambda _: REPLY)


@contextlib.asynccontextmanager
async def serving(engines: EngineFactory | None = None, **options: Any) -> AsyncIterator[WebRtcServer]:
    """A server on a free 127.0.0.1 port, stopped afterwards."""
    call = CallSettings(
        debug=True,
        connect_timeout_s=options.pop("connect_timeout_s", 30.0),
        media_timeout_s=options.pop("media_timeout_s", 10.0),
    )
    server = WebRtcServer(ServerConfig(port=0, call=call, **options), engines or short_replies())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def post(
    url: str, body: str | bytes, token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {token}"} if token else {}),
        **(headers or {}),
    }
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def offer_sdp(audio: bool = True) -> str:
    """A real offer from aiortc (with or without a microphone track)."""
    pc = RTCPeerConnection()
    try:
        if audio:
            from aiortc.mediastreams import AudioStreamTrack

            pc.addTrack(AudioStreamTrack())
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        return pc.localDescription.sdp
    finally:
        await pc.close()


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


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


# ------------------------------------------------------------------ limits and security


async def offer_body(mutate: Callable[[list[str]], list[str]] | None = None) -> bytes:
    lines = (await offer_sdp()).split("\r\n")
    return json.dumps({"type": "offer", "sdp": "\r\n".join(mutate(lines) if mutate else lines)}).encode()


JSON_TYPE = {"Content-Type": b"application/json"}


def test_a_non_ascii_authorization_header_gets_401_on_every_protected_route() -> None:
    async def scenario() -> None:
        async with serving(token="s3cret") as server:
            assert server.port is not None
            for method, path in [
                ("GET", "/config"),
                ("POST", "/offer"),
                ("GET", "/calls"),
                ("POST", "/calls/x/hangup"),
            ]:
                for value in (b"Bearer s3cr\xe9t", b"Bearer \xff\xfe", "Bearer s3cr\u00e9t".encode()):
                    status, _, content = await raw_request(
                        server.port, method, path, b"{}", {"Authorization": value, **JSON_TYPE}
                    )
                    assert status == 401, (path, value, content[:200])
                    assert "wrong bearer token" in json_error(content)

    run(scenario())


def test_deeply_nested_json_gets_400_on_the_offer_and_the_client_log() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000

    async def scenario() -> None:
        async with serving() as server:
            assert server.port is not None
            caller = WebRtcCaller(server.url)
            session_id = await caller.connect()
            for path in ("/offer", f"/calls/{session_id}/client-log"):
                for body in (deep, b'{"events": ' + deep + b"}"):
                    status, _, content = await raw_request(server.port, "POST", path, body, JSON_TYPE)
                    assert status == 400 and "nested" in json_error(content), (path, content[:200])
            await caller.close()

    run(scenario())


def _repeat_audio_section(lines: list[str]) -> list[str]:
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    audio = next(i for i in starts if lines[i].startswith("m=audio"))
    end = next((i for i in starts if i > audio), len(lines) - 1)
    return lines[:end] + lines[audio:end] + lines[end:]


def test_an_offer_repeating_its_audio_section_under_one_mid_gets_400() -> None:
    async def scenario() -> None:
        async with serving() as server:
            assert server.port is not None
            body = await offer_body(_repeat_audio_section)
            status, _, content = await raw_request(server.port, "POST", "/offer", body, JSON_TYPE)
            assert status == 400 and "a=mid" in json_error(content)
            assert not server.calls

    run(scenario())


def test_aiortcs_own_error_on_a_repeated_mid_becomes_a_rejected_offer() -> None:
    """Past the server's SDP checks, whatever aiortc raises on a bad offer is OfferRejected, not a crash."""
    from aiortc import RTCSessionDescription

    from duplexer.protocols.webrtc_call import Call, OfferRejected

    async def scenario() -> str:
        sdp = "\r\n".join(_repeat_audio_section((await offer_sdp()).split("\r\n")))
        call = Call(CallSettings(), short_replies())
        try:
            with pytest.raises(OfferRejected) as rejected:
                await call.answer(RTCSessionDescription(sdp=sdp, type="offer"))
        finally:
            await call.close("test")
        return str(rejected.value)

    assert "cannot be used" in run(scenario())


def test_a_long_or_odd_static_file_name_gets_404() -> None:
    async def scenario() -> None:
        async with serving() as server:
            assert server.port is not None
            for name in ("a" * 5000 + ".js", "%00.js", "..%5Capp.js", "%2e%2e%2fapp.js", "app.js%00.css"):
                status, _, content = await raw_request(server.port, "GET", f"/static/{name}")
                assert status == 404, (name[:40], content[:200])
                assert "no such file" in json_error(content)

    run(scenario())


def test_an_aborted_upload_logs_one_line_and_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    lines = io.StringIO()
    configure_logging("INFO", stream=lines)

    async def scenario() -> None:
        async with serving() as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: 5000\r\n\r\n" + b'{"type": "offer", ')
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.transport.abort()
            await asyncio.sleep(0.5)

    with caplog.at_level("DEBUG"):
        run(scenario())
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [r["event"] for r in logged if "abort" in r["event"]] == ["webrtc_request_aborted"]
    assert "Traceback" not in lines.getvalue()


def test_the_client_log_keeps_a_byte_budget_per_call_and_closes_after_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplexer.protocols import webrtc_server

    event = {"type": "bot_text", "t_ms": 1.0, "delta": "x" * 1000}

    async def scenario() -> None:
        async with serving(client_log_max_bytes=20_000) as server:
            caller = WebRtcCaller(server.url)
            session_id = await caller.connect()
            url = f"{server.url}/calls/{session_id}/client-log"
            for _ in range(10):
                status, _, data = await post(url, json.dumps({"events": [event] * 10, "stats": {}}))
                assert status == 200
            call = server.calls[session_id]
            assert call.client_log_bytes <= 20_000 and len(call.client_log) == 19
            assert data["dropped"] == 100 - 19
            await caller.close()
            async with asyncio.timeout(10):
                while session_id in server.calls:
                    await asyncio.sleep(0.05)
            assert (await post(url, json.dumps({"events": [], "stats": {}})))[0] == 200  # the page's last post
            monkeypatch.setattr(webrtc_server, "CLIENT_LOG_GRACE_S", 0.0)
            status, _, data = await post(url, json.dumps({"events": [event], "stats": {}}))
            assert status == 409 and "ended" in data["error"]

    run(scenario())


def test_half_sent_requests_are_closed_by_the_header_and_body_timeouts() -> None:
    """A slowloris: 30 connections dribbling a request head, and one a body, are all cut off in time."""

    async def dribbler(port: int, head_done: bool) -> float:
        started = asyncio.get_running_loop().time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        if head_done:
            writer.write(b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        try:
            async with asyncio.timeout(10):
                while not reader.at_eof():
                    writer.write(b"x" if head_done else b"X-Slow: 1\r\n")
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.3):
                            if (await reader.read(65536)).startswith(b"HTTP/1.1 408"):
                                break
        finally:
            writer.close()
        return asyncio.get_running_loop().time() - started

    async def scenario() -> None:
        async with serving(header_timeout_s=1.0, body_timeout_s=1.0) as server:
            assert server.port is not None
            port = server.port
            held = await asyncio.gather(*(dribbler(port, head_done=i == 0) for i in range(31)))
            assert max(held) < 3.0, held
            assert (await get(f"{server.url}/health"))[0] == 200  # still serving

    run(scenario())


def test_foreign_origins_and_host_names_get_403_and_the_pages_own_origin_passes() -> None:
    async def scenario() -> None:
        async with serving(allow_origins=("https://app.example.org",)) as server:
            offer = (await offer_body()).decode()
            own = {"Origin": server.url}
            status, _, data = await post(f"{server.url}/offer", offer, headers={"Origin": "https://evil.example"})
            assert status == 403 and "--allow-origin" in data["error"]
            status, _, data = await post(f"{server.url}/offer", offer, headers={"Origin": "null"})
            assert status == 403
            status, _, data = await post(
                f"{server.url}/offer", offer, headers={"Host": f"evil.example:{server.port}", **own}
            )
            assert status == 403 and "host name" in data["error"]
            status, _, data = await post(f"{server.url}/offer", offer, headers=own)
            assert status == 200
            await post(f"{server.url}/calls/{data['session_id']}/hangup", "", headers=own)
            allowed = {"Origin": "https://app.example.org"}
            status, headers, data = await post(f"{server.url}/offer", "{}", headers=allowed)
            assert status == 400 and headers["Access-Control-Allow-Origin"] == "https://app.example.org"
            async with (
                aiohttp.ClientSession() as http,
                http.options(f"{server.url}/offer", headers=allowed) as response,
            ):
                assert response.status == 204 and "Content-Type" in response.headers["Access-Control-Allow-Headers"]

    run(scenario())


def test_an_offer_must_be_sent_as_application_json() -> None:
    async def scenario() -> None:
        async with serving() as server:
            offer = (await offer_body()).decode()
            for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                status, _, data = await post(f"{server.url}/offer", offer, headers={"Content-Type": kind})
                assert status == 415 and "application/json" in data["error"]
            assert not server.calls

    run(scenario())


def test_turn_credentials_go_only_to_token_holders_and_a_shared_secret_makes_short_lived_ones() -> None:
    turn = IceServer("turn:turn.example.org:3478", "user", "pass")
    stun = IceServer("stun:stun.example.org:3478")

    async def scenario() -> None:
        async with serving(host="0.0.0.0", ice_servers=(stun, turn)) as server:  # --insecure: no token
            status, config = await get(f"http://127.0.0.1:{server.port}/config")
            assert status == 200 and config["ice_servers"] == [stun.as_json()]
        async with serving(ice_servers=(stun, turn)) as server:  # loopback, no token: as before
            assert (await get(f"{server.url}/config"))[1]["ice_servers"] == [stun.as_json(), turn.as_json()]
        secret = "coturn-static-auth-secret"
        async with serving(token="s3cret", ice_servers=(stun, IceServer(turn.url)), turn_secret=secret) as server:
            assert (await get(f"{server.url}/config"))[0] == 401
            before = time.time()
            status, config = await get(f"{server.url}/config", token="s3cret")
            handed = config["ice_servers"][1]
            expiry, _, user = handed["username"].partition(":")
            assert before + 3600 - 1 <= int(expiry) <= time.time() + 3600 and user == "duplexer"
            digest = hmac.new(secret.encode(), handed["username"].encode(), hashlib.sha1).digest()
            assert handed["credential"] == base64.b64encode(digest).decode()

    run(scenario())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--host", "0.0.0.0"], "--insecure"),
        (["--host", "192.0.2.7"], "set --token"),
        (["--allow-origin", "https://app.example.org/path"], "no path"),
        (["--allow-origin", "ftp://x"], "not an http"),
        (["--turn-secret", "s"], "turn: or turns:"),
        (["--turn-secret", "s", "--ice-server", "turn:t:3478", "--ice-username", "u"], "drop --ice-username"),
    ],
)
def test_serve_refuses_an_open_bind_without_a_token_and_bad_security_options(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUPLEXER_TOKEN", raising=False)
    assert cli_main(["serve", "--engines", "scripted", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_serve_help_explains_the_security_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--allow-origin ORIGIN", "--insecure", "--turn-secret", "--turn-ttl"):
        assert option in text
