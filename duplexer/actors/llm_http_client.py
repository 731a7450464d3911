"""What every served LLM backend shares: clear errors, retries with backoff, timeouts, and accounting.

Speculation and barge-in start and cancel many requests, so each backend counts what a
cancel threw away: :class:`LlmServerStats` holds, per engine (so per process, across
sessions), the tokens streamed by requests that were cancelled before they finished and the
time the server held those requests (from sending the request to the server letting go of
it: the abort acknowledged, or the connection closed). Both are measured on the client:
tokens are what reached us before the cancel (a lower bound; a few more may have been in
flight), time is an upper bound on the server's work.

:class:`StreamingHttpLlm` is the skeleton of the HTTP backends (OpenAI-compatible and
SGLang's native ``/generate``): it sends one streaming request per reply, retries only
before the first piece of text (a retry after text would repeat speech), bounds the wait
for the first piece and the silence between pieces, and on a cancel, a timeout or a broken
stream closes the connection and calls the server's abort endpoint where it has one.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from duplexer.actors.engines import Message
from duplexer.actors.tool_calls import StreamPiece, ToolCallChunk
from duplexer.runtime.logging import get_logger

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
"""Statuses that mean "busy or restarting, try again": retried before the first piece only."""
MAX_ERROR_BODY_CHARS = 300
"""How much of a server's error body goes into an error message."""


class LlmServerError(RuntimeError):
    """An LLM backend failed a request; the one-line message names the server and what to check."""


class LlmServerUnavailable(LlmServerError):
    """The server could not be reached or stayed busy through every retry."""


class LlmServerTimeout(LlmServerError):
    """No first piece of text, or no next piece, within the configured time."""


class LlmStreamBroken(LlmServerError):
    """The stream stopped before the reply finished (the server went away or aborted it)."""


class LlmRequestRejected(LlmServerError):
    """The server refused the request itself (bad key, unknown model, invalid body): never retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for failures before the first piece of text."""

    max_attempts: int = 3
    backoff_initial_s: float = 0.25
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 2.0
    jitter: float = 0.2
    """Relative spread of each delay, so many sessions do not retry in step."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"retry max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < 0 or self.backoff_multiplier < 1:
            raise ValueError("retry backoff_initial_s and backoff_max_s must be >= 0 and backoff_multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"retry jitter must be within [0, 1], got {self.jitter}")

    def delay_s(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """The wait before the next attempt, after ``failed_attempts`` (>= 1) failures."""
        base = min(self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier ** (failed_attempts - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))


@dataclass(frozen=True)
class Timeouts:
    """How long a request may take at each stage before it fails (and the bot speaks its fallback)."""

    connect_s: float = 3.0
    first_token_s: float = 15.0
    """From sending the request (retries included) to the first piece of text."""
    stall_s: float = 10.0
    """Longest silence between two pieces of a reply."""
    abort_s: float = 2.0
    """How long a cancel waits for the server to acknowledge an abort."""

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_token_s", "stall_s", "abort_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeout {name} must be > 0, got {getattr(self, name)}")


class RequestOutcome(enum.StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    """Closed by the caller before it finished: a discarded speculation or a barge-in."""
    FAILED = "failed"


@dataclass
class RequestRecord:
    """One request's life, as the engine saw it."""

    request_id: str
    reply_id: str
    started_s: float
    outcome: RequestOutcome | None = None
    pieces: int = 0
    """Text pieces streamed (an OpenAI-style stream sends about one token per piece)."""
    tool_call_pieces: int = 0
    """Streamed function-call fragments (OpenAI ``delta.tool_calls`` entries)."""
    completion_tokens: int | None = None
    """Tokens the server says it generated, where it says so."""
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    """Prompt tokens the server's prefix cache served (SGLang's ``meta_info.cached_tokens``)."""
    first_piece_s: float | None = None
    server_s: float = 0.0
    attempts: int = 0
    aborted: bool = False
    """The server's abort endpoint acknowledged a cancel."""
    error: str = ""

    @property
    def tokens(self) -> int:
        """Generated tokens: the server's count when known, else the pieces streamed."""
        return self.completion_tokens if self.completion_tokens is not None else self.pieces

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_piece_s is None else self.first_piece_s - self.started_s


class LlmServerStats:
    """Counters of one engine's requests, for metrics; ``recent`` keeps the last records for inspection."""

    def __init__(self, keep: int = 1000) -> None:
        self.counters: dict[str, float] = dict.fromkeys(
            (
                "requests",
                "completed",
                "cancelled",
                "failed",
                "retries",
                "aborts_sent",
                "aborts_failed",
                "tokens_completed",
                "tokens_discarded",
                "server_s_completed",
                "server_s_discarded",
                "prompt_tokens",
                "cached_tokens",
            ),
            0.0,
        )
        self.recent: deque[RequestRecord] = deque(maxlen=keep)
        self.in_flight: dict[str, RequestRecord] = {}

    def begin(self, request_id: str, reply_id: str) -> RequestRecord:
        record = RequestRecord(request_id, reply_id, started_s=time.monotonic())
        self.counters["requests"] += 1
        self.in_flight[request_id] = record
        return record

    def end(self, record: RequestRecord, outcome: RequestOutcome, error: str = "") -> None:
        record.outcome = outcome
        record.error = error
        record.server_s = time.monotonic() - record.started_s
        self.in_flight.pop(record.request_id, None)
        self.recent.append(record)
        self.counters[str(outcome)] += 1
        if outcome is RequestOutcome.COMPLETED:
            self.counters["tokens_completed"] += record.tokens
            self.counters["server_s_completed"] += record.server_s
        else:  # cancelled or failed: the work was thrown away
            self.counters["tokens_discarded"] += record.tokens
            self.counters["server_s_discarded"] += record.server_s
        self.counters["prompt_tokens"] += record.prompt_tokens or 0
        self.counters["cached_tokens"] += record.cached_tokens or 0

    def count(self, name: str, amount: float = 1.0) -> None:
        self.counters[name] += amount

    def snapshot(self, prefix: str = "llm_server.") -> dict[str, float]:
        """Every counter, named ``llm_server.<counter>``: ready for a metrics sink."""
        return {prefix + name: value for name, value in self.counters.items()}


def new_request_id(reply_id: str) -> str:
    """A request id unique across sessions (reply ids repeat between sessions), readable in server logs."""
    return f"dx-{reply_id}-{secrets.token_hex(6)}"


async def sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The ``data`` payload of each server-sent event (multi-line data joined by newlines)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


@dataclass
class StreamChunk:
    """What one streamed event carried."""

    text: str = ""
    tool_calls: tuple[ToolCallChunk, ...] = ()
    finished: bool = False
    finish_reason: str = ""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


class ChunkParser:
    """Turns one request's event payloads into :class:`StreamChunk` (a backend's wire format)."""

    def feed(self, payload: Mapping[str, Any]) -> StreamChunk:
        raise NotImplementedError


@dataclass(frozen=True)
class HttpRequestSpec:
    """One streaming request: where it goes and its JSON body, already serialized."""

    url: str
    body: bytes
    abort_url: str = ""
    abort_body: bytes = b""


def json_body(fields: Sequence[tuple[str, Any]]) -> bytes:
    """Compact JSON in the given key order, so equal prefixes of requests serialize to equal bytes."""
    return json.dumps(dict(fields), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def bearer_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def resolve_api_key(api_key: str, api_key_env: str, backend: str) -> str:
    """The key given outright, else the one in the named environment variable (which must be set)."""
    if api_key or not api_key_env:
        return api_key
    key = os.environ.get(api_key_env, "")
    if not key:
        raise ValueError(f"{backend} api_key_env names {api_key_env}, which is not set; export it or drop it")
    return key


@dataclass
class _LoopClient:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient


class StreamingHttpLlm:
    """Skeleton of an HTTP streaming LLM engine; subclasses say how to build requests and read events."""

    def __init__(
        self,
        server_name: str,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.server_name = server_name
        """How errors name the server: the backend and its base URL."""
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.headers = dict(headers or {})
        self.stats = LlmServerStats()
        self.log = get_logger(component="llm_server", server=server_name)
        self._clients: list[_LoopClient] = []
        self._aborts: set[asyncio.Future[None]] = set()

    # ---------------------------------------------------------------- for subclasses

    async def build_request(self, messages: Sequence[Message], request_id: str) -> HttpRequestSpec:
        raise NotImplementedError

    def chunk_parser(self) -> ChunkParser:
        raise NotImplementedError

    # ---------------------------------------------------------------- the engine

    def client(self) -> httpx.AsyncClient:
        """An HTTP client for the running event loop (connections cannot cross loops)."""
        loop = asyncio.get_running_loop()
        for entry in self._clients:
            if entry.loop is loop:
                return entry.client
        self._clients = [entry for entry in self._clients if not entry.loop.is_closed()]
        timeout = httpx.Timeout(connect=self.timeouts.connect_s, read=None, write=self.timeouts.connect_s, pool=None)
        created = httpx.AsyncClient(timeout=timeout, headers=self.headers)
        self._clients.append(_LoopClient(loop, created))
        return created

    async def aclose(self) -> None:
        """Close this event loop's connections; call it before the loop ends."""
        loop = asyncio.get_running_loop()
        mine = [entry for entry in self._clients if entry.loop is loop]
        self._clients = [entry for entry in self._clients if entry.loop is not loop]
        for entry in mine:
            await entry.client.aclose()

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[StreamPiece]:
        """Stream reply text and call fragments; closing the iterator closes the connection and aborts the request."""
        request_id = new_request_id(reply_id)
        record = self.stats.begin(request_id, reply_id)
        outcome, error = RequestOutcome.FAILED, ""
        spec: HttpRequestSpec | None = None
        live = False  # the server may be working on the request
        try:
            spec = await self.build_request(messages, request_id)
            deadline = time.monotonic() + self.timeouts.first_token_s
            live = True
            response = await self._open(spec, record, deadline)
            reader = self._read(response, record, deadline)
            try:
                async for text in reader:
                    yield text
            finally:
                await reader.aclose()
                await response.aclose()
            outcome = RequestOutcome.COMPLETED
        except (asyncio.CancelledError, GeneratorExit):
            outcome = RequestOutcome.CANCELLED
            raise
        except LlmServerError as exc:
            error = str(exc)
            if isinstance(exc, (LlmServerUnavailable, LlmRequestRejected)):
                live = False  # every attempt was refused: nothing runs on the server
            raise
        except ValueError as exc:  # a prompt the backend's format cannot carry
            error = f"{self.server_name}: cannot build the request: {exc}"
            raise LlmServerError(error) from exc
        finally:
            if spec is not None and spec.abort_url and live and outcome is not RequestOutcome.COMPLETED:
                await self._abort(spec, record)
            self.stats.end(record, outcome, error)
            if error:
                self.log.warning("llm_request_failed", request_id=request_id, reply_id=reply_id, error=error)

    async def _open(self, spec: HttpRequestSpec, record: RequestRecord, deadline: float) -> httpx.Response:
        """Send the request, retrying connection failures and busy statuses with backoff."""
        client = self.client()
        problem = ""
        for attempt in range(1, self.retry.max_attempts + 1):
            record.attempts = attempt
            request = client.build_request(
                "POST", spec.url, content=spec.body, headers={"Content-Type": "application/json"}
            )
            retry_after_s = 0.0
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    response = await client.send(request, stream=True)
            except TimeoutError:
                raise LlmServerTimeout(
                    f"{self.server_name} sent no response within {self.timeouts.first_token_s:g} s "
                    "(first_token_s); is it overloaded?"
                ) from None
            except httpx.ConnectTimeout:
                problem = f"connection timed out after {self.timeouts.connect_s:g} s"
            except httpx.ConnectError as exc:
                problem = f"cannot connect ({_reason(exc)})"
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                problem = f"connection dropped before the response ({_reason(exc)})"
            else:
                if response.status_code == 200:
                    return response
                detail = await _error_detail(response)
                await response.aclose()
                if response.status_code not in RETRYABLE_STATUS:
                    raise LlmRequestRejected(
                        f"{self.server_name} rejected the request: HTTP {response.status_code} {detail}; "
                        f"{_status_hint(response.status_code)}"
                    )
                problem = f"HTTP {response.status_code} {detail}".strip()
                retry_after_s = _retry_after_s(response)
            if attempt == self.retry.max_attempts:
                break
            delay = max(retry_after_s, self.retry.delay_s(attempt))
            if time.monotonic() + delay >= deadline:
                break
            self.stats.count("retries")
            self.log.info("llm_request_retry", request_id=record.request_id, attempt=attempt, problem=problem)
            await asyncio.sleep(delay)
        raise LlmServerUnavailable(
            f"{self.server_name} is unavailable: {problem} after {record.attempts} attempt(s); "
            "check that the server is running and the URL is right"
        )

    async def _read(
        self, response: httpx.Response, record: RequestRecord, deadline: float
    ) -> AsyncGenerator[StreamPiece, None]:
        parser = self.chunk_parser()
        events = sse_data(response.aiter_lines())
        finished = False
        try:
            while True:
                if record.first_piece_s is None:
                    budget, what = deadline - time.monotonic(), f"no text within {self.timeouts.first_token_s:g} s"
                else:
                    budget, what = self.timeouts.stall_s, f"the stream stalled for {self.timeouts.stall_s:g} s"
                try:
                    async with asyncio.timeout(max(0.0, budget)):
                        payload = await anext(events)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if finished:  # the reply is complete; the server just never closed the stream
                        break
                    raise LlmServerTimeout(f"{self.server_name}: {what}; is it overloaded?") from None
                except httpx.TransportError as exc:
                    raise LlmStreamBroken(
                        f"{self.server_name} went away mid-stream ({_reason(exc)}) after {record.pieces} piece(s)"
                    ) from None
                if payload.strip() == "[DONE]":
                    break
                chunk = parser.feed(self._event(payload))
                absorb_usage(record, chunk)
                if chunk.text:
                    if record.first_piece_s is None:
                        record.first_piece_s = time.monotonic()
                    record.pieces += 1
                    yield chunk.text
                for call in chunk.tool_calls:
                    record.first_piece_s = record.first_piece_s or time.monotonic()
                    record.tool_call_pieces += 1
                    yield call
                if chunk.finished:
                    finished = True
                    if chunk.finish_reason == "abort":
                        raise LlmStreamBroken(
                            f"{self.server_name} aborted the request itself after {record.pieces} piece(s)"
                        )
        finally:
            await events.aclose()
        if not finished:
            raise LlmStreamBroken(
                f"{self.server_name} went away mid-stream: the stream ended unfinished after {record.pieces} piece(s) "
                "(a llama.cpp server with interrupt_requests on also does this when another request arrives)"
            )

    def _event(self, payload: str) -> Mapping[str, Any]:
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            raise LlmStreamBroken(f"{self.server_name} sent an event that is not JSON: {payload[:80]!r}") from None
        if not isinstance(event, dict):
            raise LlmStreamBroken(f"{self.server_name} sent an event that is not a JSON object: {payload[:80]!r}")
        if "error" in event:
            raise LlmServerError(f"{self.server_name} reported an error mid-stream: {_error_message(event)}")
        return event

    async def _abort(self, spec: HttpRequestSpec, record: RequestRecord) -> None:
        """Tell the server to drop the request; shielded, so a second cancel cannot stop the abort."""
        task = asyncio.ensure_future(self._post_abort(spec, record))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)
        await asyncio.shield(task)

    async def _post_abort(self, spec: HttpRequestSpec, record: RequestRecord) -> None:
        self.stats.count("aborts_sent")
        try:
            response = await self.client().post(
                spec.abort_url,
                content=spec.abort_body,
                headers={"Content-Type": "application/json"},
                timeout=self.timeouts.abort_s,
            )
        except httpx.HTTPError as exc:
            self.stats.count("aborts_failed")
            self.log.warning("llm_abort_failed", request_id=record.request_id, error=_reason(exc))
            return
        record.aborted = response.status_code == 200
        if not record.aborted:
            self.stats.count("aborts_failed")
            self.log.warning("llm_abort_refused", request_id=record.request_id, status=response.status_code)

    async def get_json(self, url: str, what: str) -> Any:
        """GET a JSON document (health and info endpoints); a clear error when the server is not there."""
        try:
            response = await self.client().get(url, timeout=self.timeouts.connect_s)
        except httpx.HTTPError as exc:
            raise LlmServerUnavailable(
                f"{self.server_name}: {what} failed ({_reason(exc)}); check that the server is running"
            ) from None
        if response.status_code != 200:
            detail = await _error_detail(response)
            raise LlmServerUnavailable(f"{self.server_name}: {what} answered HTTP {response.status_code} {detail}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    async def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        """Poll :meth:`check_health` until it passes; the last failure is raised after ``timeout_s``."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                await self.check_health()
                return
            except LlmServerError:
                if time.monotonic() + poll_s > end:
                    raise
            await asyncio.sleep(poll_s)

    async def check_health(self) -> None:
        raise NotImplementedError


def absorb_usage(record: RequestRecord, chunk: StreamChunk) -> None:
    """Copy the token counts a stream chunk reports into the request's record."""
    if chunk.completion_tokens is not None:
        record.completion_tokens = chunk.completion_tokens
    if chunk.prompt_tokens is not None:
        record.prompt_tokens = chunk.prompt_tokens
    if chunk.cached_tokens is not None:
        record.cached_tokens = chunk.cached_tokens


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error_message(event: Mapping[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error)
    return str(error)


async def _error_detail(response: httpx.Response) -> str:
    try:
        raw = (await response.aread()).decode("utf-8", "replace")
    except httpx.HTTPError:
        return ""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw.strip()[:MAX_ERROR_BODY_CHARS]
    if isinstance(parsed, Mapping):
        for key in ("error", "detail", "message"):
            if key in parsed:
                value = parsed[key]
                text = value.get("message", value) if isinstance(value, Mapping) else value
                return str(text)[:MAX_ERROR_BODY_CHARS]
    return raw.strip()[:MAX_ERROR_BODY_CHARS]


def _status_hint(status: int) -> str:
    if status in (401, 403):
        return "check the API key (api_key or api_key_env)"
    if status == 404:
        return "check the base URL (an OpenAI-compatible one ends in /v1) and the model name"
    if status in (400, 422):
        return "the server does not accept this request body; check the model and the options"
    return "see the server's log"


def _retry_after_s(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return min(10.0, max(0.0, float(value)))
    except ValueError:
        return 0.0
