"""Fuzzing `duplexer serve`: whatever a client sends in a well-formed HTTP request, the answer is
below 500 and, when it is an error, a JSON ``{"error": ...}``.

One real server (scripted engines, a token, debug on) listens on a loopback port for the whole
module, on its own event loop in a thread; each example sends raw bytes to it. Bodies: JSON
shapes with junk fields, mutations of a real aiortc offer, random bytes, deep nesting, huge
numbers; headers: any Content-Type, odd or non-ASCII Authorization, Origin and Host values.
(Bytes that break HTTP framing itself are answered by aiohttp's parser with a plain 400 before
the app runs; docs/webrtc.md says so.)
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.protocols.engine_factory import scripted_engines
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from tests.conftest import fuzz_settings
from tests.serve_http import offer_sdp, raw_request

pytestmark = pytest.mark.fuzz

T = TypeVar("T")
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}".encode()}
JSON_TYPE = {"Content-Type": b"application/json"}


@dataclass
class Live:
    loop: asyncio.AbstractEventLoop
    server: WebRtcServer
    offer_sdp: str
    call_id: str

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def send(self, method: str, path: str, body: bytes, headers: dict[str, bytes]) -> tuple[int, bytes]:
        """Send one request; fail unless the answer is below 500 and JSON. A call it starts is hung up."""
        status, _, content = self.run(raw_request(self.port, method, path, body, headers))
        assert status < 500, (status, content[:300])
        data = json.loads(content)
        if status >= 400:
            assert isinstance(data, dict) and isinstance(data.get("error"), str), content[:300]
        elif path == "/offer":
            self.run(raw_request(self.port, "POST", f"/calls/{data['session_id']}/hangup", b"", AUTH))
        return status, content


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-serve", daemon=True)
    thread.start()
    call = CallSettings(debug=True, connect_timeout_s=60.0, media_timeout_s=60.0)
    config = ServerConfig(port=0, token=TOKEN, max_sessions=64, call=call)
    server = WebRtcServer(config, scripted_engines())
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        sdp = asyncio.run_coroutine_threadsafe(offer_sdp(), loop).result(30)
        body = json.dumps({"type": "offer", "sdp": sdp}).encode()
        assert server.port is not None
        status, _, content = asyncio.run_coroutine_threadsafe(
            raw_request(server.port, "POST", "/offer", body, {**AUTH, **JSON_TYPE}), loop
        ).result(30)
        assert status == 200, content  # a call that stays open, for the client-log route
        yield Live(loop, server, sdp, json.loads(content)["session_id"])
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ------------------------------------------------------------------ strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def offer_shapes(draw: st.DrawFn, sdp: str) -> bytes:
    """JSON objects shaped roughly like an offer: right or wrong types, junk fields."""
    body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
    if draw(st.booleans()):
        body["type"] = draw(st.sampled_from(["offer", "answer", "", None, 1]) | json_values)
    if draw(st.booleans()):
        body["sdp"] = draw(st.sampled_from([sdp, sdp[:200], "v=0", ""]) | json_values)
    return json.dumps(body).encode()


@st.composite
def mutated_offers(draw: st.DrawFn, sdp: str) -> bytes:
    """A real offer with a few lines dropped, repeated, swapped, garbled or sections duplicated."""
    lines = sdp.split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "repeat", "swap", "garble", "insert", "section", "truncate", "mid"]))
        if op == "drop":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "garble":
            lines[i] = lines[i][:2] + draw(st.text(max_size=40))
        elif op == "insert":
            lines.insert(i, draw(st.sampled_from(["a=", "m=", "c=", "b=", "k="])) + draw(st.text(max_size=40)))
        elif op == "section":
            starts = [k for k, line in enumerate(lines) if line.startswith("m=")] + [len(lines)]
            if len(starts) > 1:
                a = draw(st.integers(0, len(starts) - 2))
                lines[starts[a + 1] : starts[a + 1]] = lines[starts[a] : starts[a + 1]]
        elif op == "truncate":
            lines = lines[: i + 1]
        elif op == "mid":
            lines = [
                f"a=mid:{draw(st.sampled_from(['0', '1', '', 'x' * 300]))}" if x.startswith("a=mid") else x
                for x in lines
            ]
        if not lines:
            lines = ["v=0"]
    return json.dumps({"type": "offer", "sdp": "\r\n".join(lines)}).encode()


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, deep nesting, huge or non-finite numbers, broken UTF-8."""
    kind = draw(st.sampled_from(["bytes", "deep", "number", "utf8"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "deep":
        depth = draw(st.integers(20, 20_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode()
    if kind == "number":
        number = draw(
            st.sampled_from(["9" * 5000, "1e999", "-1e400", "NaN", "Infinity", "1" * 33 + ".5", "0." + "0" * 400])
        )
        return f'{{"type": "offer", "sdp": {number}, "n": {number}}}'.encode()
    return b'{"type": "offer", "sdp": "' + draw(st.binary(min_size=1, max_size=50)) + b'\xff\xfe"}'


header_bytes = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip())
content_types = (
    st.sampled_from(
        [b"application/json", b"APPLICATION/JSON; charset=utf-8", b"text/plain", b"application/jsonx", b"", b"*/*"]
    )
    | header_bytes
)


# ------------------------------------------------------------------ properties


@fuzz_settings()
@given(data=st.data())
def test_any_offer_body_gets_an_answer_below_500_in_json(live: Live, data: st.DataObject) -> None:
    body = data.draw(offer_shapes(live.offer_sdp) | mutated_offers(live.offer_sdp) | hostile_bodies())
    live.send("POST", "/offer", body, {**AUTH, **JSON_TYPE})


@fuzz_settings()
@given(body=hostile_bodies() | st.binary(max_size=300), content_type=content_types)
def test_any_content_type_and_body_gets_an_answer_below_500_in_json(
    live: Live, body: bytes, content_type: bytes
) -> None:
    status, _ = live.send("POST", "/offer", body, {**AUTH, "Content-Type": content_type})
    assert status != 200


@fuzz_settings()
@given(
    authorization=header_bytes | st.sampled_from([b"Bearer", b"Bearer ", b"bearer " + TOKEN.encode(), b"Bearer \xe9"]),
    origin=st.none() | header_bytes | st.sampled_from([b"null", b"http://127.0.0.1", b"https://evil.example"]),
    host=st.none() | header_bytes,
    route=st.sampled_from([("GET", "/config"), ("POST", "/offer"), ("GET", "/calls"), ("POST", "/calls/x/hangup")]),
)
def test_odd_headers_get_an_answer_below_500_in_json(
    live: Live, authorization: bytes, origin: bytes | None, host: bytes | None, route: tuple[str, str]
) -> None:
    headers = {"Authorization": authorization, **JSON_TYPE}
    if origin is not None:
        headers["Origin"] = origin
    if host:
        headers["Host"] = host
    status, _ = live.send(route[0], route[1], b"{}", headers)
    scheme, _, given_token = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or given_token.strip() != TOKEN.encode():
        assert status >= 400  # nothing is served to a request without the right token


@fuzz_settings()
@given(
    body=offer_shapes("v=0")
    | hostile_bodies()
    | json_values.map(lambda v: json.dumps({"events": [v], "stats": {}}).encode()),
    call=st.sampled_from(["live", "missing"]) | st.text(min_size=1, max_size=300),
)
def test_any_client_log_post_or_call_path_gets_an_answer_below_500_in_json(live: Live, body: bytes, call: str) -> None:
    call_id = live.call_id if call == "live" else quote(call, safe="")
    live.send("POST", f"/calls/{call_id}/client-log", body, {**AUTH, **JSON_TYPE})
    live.send("GET", f"/calls/{call_id}", b"", AUTH)


@fuzz_settings()
@given(name=st.text(min_size=1, max_size=6000))
def test_any_static_file_name_gets_an_answer_below_500(live: Live, name: str) -> None:
    status, _, content = live.run(raw_request(live.port, "GET", f"/static/{quote(name, safe='')}"))
    assert status < 500, (status, content[:200])
    if status >= 400:
        assert isinstance(json.loads(content).get("error"), str)
