"""A real headless Chromium calls the server through the served page (ARCHITECTURE.md section 4).

Chromium's fake microphone plays a recorded question from a wav file. The server
runs with ``debug``, so the page POSTs every data channel message it received and
its RTP stats to ``/calls/{id}/client-log``; the test reads them from
``GET /calls/{id}``. The tab is closed through Chromium's DevTools HTTP endpoint.
On a fresh machine Chromium is installed with apt-get (as root); the tests skip,
saying why, only when that is impossible.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from duplexer.protocols.engine_factory import scripted_engines
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_messages import order_problems
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from tests.conftest import SHARED

pytestmark = pytest.mark.slow

SPEECH = SHARED / "data" / "vap_phrases" / "audio" / "basketball_short_female_en-US-Wavenet-E.wav"
QUESTION = "so do you play basketball"
REPLY = "Sure, here is a short answer."
TOKEN = "browser-test-token"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (needs root)."""
    path = find_chromium()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=600, env=env)
        install = subprocess.run(  # waits for another apt or dpkg to finish rather than fail on its lock
            ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=600", "chromium"],
            check=False,
            capture_output=True,
            timeout=1200,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("apt-get install chromium timed out")
    path = find_chromium()
    if path is None:
        tail = install.stderr.decode(errors="replace")[-300:]
        pytest.skip(f"apt-get install -y chromium failed (exit {install.returncode}): {tail}")
    return path


def user_wav(tmp_path: Path) -> Path:
    """The question after 1 s of silence, then silence: what Chromium's fake microphone says, once."""
    if not SPEECH.exists():
        pytest.fail(f"test speech {SPEECH} is missing; the shared data folder should sit beside the repo")
    with wave.open(str(SPEECH), "rb") as wav:
        rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
    path = tmp_path / "user.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * rate) + pcm + bytes(2 * rate * 20))
    return path


@contextlib.contextmanager
def browser(binary: str, url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Headless Chromium on ``url`` with the flags of ARCHITECTURE.md section 4; killed afterwards."""
    profile = tmp_path / "profile"
    args = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={user_wav(tmp_path)}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        url,
    ]
    log = (tmp_path / "chromium.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process, profile
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=15)
        log.close()


@contextlib.asynccontextmanager
async def serving(media_timeout_s: float) -> AsyncIterator[WebRtcServer]:
    engines = scripted_engines(transcripts=(QUESTION,), reply_for=lambda _: REPLY)
    call = CallSettings(debug=True, media_timeout_s=media_timeout_s, engines_name="scripted")
    server = WebRtcServer(ServerConfig(port=0, token=TOKEN, call=call), engines)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def get_json(url: str, token: str | None = TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        response.raise_for_status()
        return await response.json()


async def first_call_id(server: WebRtcServer, timeout_s: float, log: Path) -> str:
    async with asyncio.timeout(timeout_s):
        while not server.calls:
            await asyncio.sleep(0.1)
    return next(iter(server.calls))


async def client_log_until(server: WebRtcServer, call_id: str, done: Any, timeout_s: float) -> dict[str, Any]:
    """The call's detail, once the page's posted log satisfies ``done``."""
    detail: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                detail = await get_json(f"{server.url}/calls/{call_id}")
                if done(detail):
                    return detail
                await asyncio.sleep(0.25)
    except TimeoutError:
        got = [m.get("type") for m in detail.get("client_log", [])]
        raise AssertionError(f"the page's log never got there; it holds {got}") from None


async def until_gone(server: WebRtcServer, call_id: str, timeout_s: float) -> str:
    async with asyncio.timeout(timeout_s):
        while call_id in server.calls:
            await asyncio.sleep(0.05)
    return str(server.recent[call_id].close_reason)


async def close_tab(profile: Path) -> None:
    """Close the page's tab through the DevTools HTTP endpoint, as a user closing it would."""
    port_file = profile / "DevToolsActivePort"
    async with asyncio.timeout(10):
        while not port_file.exists():
            await asyncio.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.get(f"http://127.0.0.1:{port}/json/close/{page['id']}") as response:
            assert response.status == 200


def run(coro: Any, timeout_s: float) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


def test_a_browser_call_hears_the_bot_gets_ordered_events_and_ends_when_the_tab_closes(
    chromium: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        before = set(asyncio.all_tasks())
        async with serving(media_timeout_s=30.0) as server:
            url = f"{server.url}/?autostart=1#token={TOKEN}"
            with browser(chromium, url, tmp_path) as (process, profile):
                call_id = await first_call_id(server, 30, tmp_path / "chromium.log")

                def answered(detail: dict[str, Any]) -> bool:
                    kinds = [m.get("type") for m in detail["client_log"]]
                    inbound = detail["client_stats"].get("inbound", {})
                    return (
                        "metrics" in kinds
                        and "history" in kinds[kinds.index("metrics") :]
                        and bool(inbound.get("totalAudioEnergy"))
                    )

                detail = await client_log_until(server, call_id, answered, 40)
                received = detail["client_log"]
                assert order_problems(received) == []
                assert received[0]["type"] == "hello" and received[0]["session_id"] == call_id
                finals = [m["text"] for m in received if m["type"] == "transcript" and m["final"]]
                assert finals == [QUESTION]
                assert any(m["type"] == "speech" and m["event"] == "start" for m in received)
                assert any(m["type"] == "bot_text" and m.get("text") == REPLY for m in received)
                assert [m["new"] for m in received if m["type"] == "state"][-1] == "Silence"
                metrics = next(m for m in received if m["type"] == "metrics")
                assert metrics["outcome"] == "done" and metrics["response_latency_ms"] > 0
                # what the server sent is what the page got, in the same order
                sent = [m for m in detail["sent"] if m["type"] != "bye"][: len(received)]
                assert [m["type"] for m in sent] == [m["type"] for m in received]
                # the bot's voice reached the browser and was decoded (not silence)
                inbound = detail["client_stats"]["inbound"]
                assert inbound["packetsReceived"] > 50 and inbound["totalAudioEnergy"] > 0
                # Chromium's microphone reached the pipeline as 16 kHz frames, in step with the clock
                assert detail["inbound"]["pipeline_frames"] > 100 and detail["inbound"]["resyncs"] == 0

                await close_tab(profile)
                reason = await until_gone(server, call_id, 10)
                assert reason in {"hangup", "data_channel_closed", "connection_closed"}
                assert process.poll() is None  # the browser is still up: only the tab went away
        await asyncio.sleep(0.2)
        assert [t for t in set(asyncio.all_tasks()) - before if not t.done()] == []

    run(scenario(), timeout_s=120)


def test_a_browser_that_vanishes_mid_call_is_torn_down_by_the_media_timeout(chromium: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(media_timeout_s=2.0) as server:
            url = f"{server.url}/?autostart=1#token={TOKEN}"
            with browser(chromium, url, tmp_path) as (process, _):
                call_id = await first_call_id(server, 30, tmp_path / "chromium.log")
                await client_log_until(server, call_id, lambda d: d["inbound"]["pipeline_frames"] > 0, 20)
                process.kill()  # no pagehide, no DTLS close: the peer is just gone
                reason = await until_gone(server, call_id, 10)
            assert reason == "media_timeout"
            assert not server.calls
            assert server.recent[call_id].session.supervisor.tasks == []

    run(scenario(), timeout_s=90)
