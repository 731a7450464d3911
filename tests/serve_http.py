"""A raw HTTP/1.1 client for probing `duplexer serve` with bytes an ordinary client would not send
(non-ASCII headers, any Content-Type, half-sent requests)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def raw_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, bytes] | None = None,
    timeout_s: float = 20.0,
) -> tuple[int, dict[str, str], bytes]:
    """Send one request on its own connection; (status, headers, body) of the answer."""
    head = f"{method} {path} HTTP/1.1\r\n".encode()
    fields = {"Host": f"127.0.0.1:{port}".encode(), "Content-Length": str(len(body)).encode(), "Connection": b"close"}
    fields.update(headers or {})
    for name, value in fields.items():
        head += name.encode() + b": " + value + b"\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    raw_headers, _, content = rest.partition(b"\r\n\r\n")
    parsed = {}
    for line in raw_headers.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, content


def json_error(content: bytes) -> str:
    """The ``error`` of a JSON error body; fails the test when the body is not one."""
    data: Any = json.loads(content)
    assert isinstance(data, dict) and isinstance(data.get("error"), str), content[:200]
    return str(data["error"])
