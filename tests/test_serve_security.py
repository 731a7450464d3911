"""`duplexer serve`'s limits and security: bad headers and bodies get a 4xx JSON answer, slow
clients are cut off, foreign pages are refused, TURN credentials go only to token holders."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import sys
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from duplexer.cli import main as cli_main
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_client import WebRtcCaller
from duplexer.protocols.webrtc_server import IceServer
from duplexer.runtime.logging import configure_logging
from tests.conftest import run
from tests.serve_http import (
    get,
    json_error,
    offer_sdp,
    post,
    raw_request,
    serving,
    short_replies,
)


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> Iterator[None]:
    """`duplexer serve` points the structured log at sys.stderr, which capsys closes after the test."""
    yield
    configure_logging(stream=sys.__stderr__)


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
