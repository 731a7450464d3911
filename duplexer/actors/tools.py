"""Tool actor: runs the LLM's tool calls beside speech, and never lets one act on a dead reply.

The text thread of the Step-Audio pipeline (paper figure 7): while TTS speaks the reply's
preface, the call runs here, and its :class:`ToolResult` lets the LLM continue the same reply.

Safety rules, all decided here:

- Only registered, allowed tools run, and only with arguments that fit their schema;
  anything else is an ``invalid`` result and an error event, never an exception.
- Read-only tools run at once, even for a speculative reply, and are cancelled with it.
- Side-effecting tools are deferred until their reply is committed *and* played to its end,
  so the user heard the announcement ("I'll hang up now") and did not interrupt it. A reply
  cancelled before then (barge-in, speculation discarded) never runs them: ``prevented``.
- Every call gets exactly one result, so nothing is left "in progress".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from duplexer.actors.tool_calls import ToolStatus, wait_on_clock
from duplexer.actors.tool_registry import Tool, ToolArgumentsError, ToolRegistry, result_text
from duplexer.policies.reply import ReplyLedger, ReplyStage
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    CancelReply,
    CommitReply,
    ErrorEvent,
    Event,
    PlayoutDone,
    PlayoutStopped,
    StartReply,
    ToolCallDeferred,
    ToolCallRequested,
    ToolCallStarted,
    ToolResult,
)


@dataclass(frozen=True)
class ToolParams:
    max_calls_per_reply: int = 4
    """Calls beyond this many in one reply are refused, so a looping model cannot flood tools."""


@dataclass
class _Deferred:
    request: ToolCallRequested
    tool: Tool
    arguments: dict[str, Any]


@dataclass
class _ReplyCalls:
    n_calls: int = 0
    running: dict[str, tuple[asyncio.Task[None], ToolCallRequested]] = field(default_factory=dict)
    deferred: dict[str, _Deferred] = field(default_factory=dict)


class ToolActor(Actor):
    name = "tools"
    subscribes = (StartReply, CommitReply, CancelReply, ToolCallRequested, PlayoutDone, PlayoutStopped)

    def __init__(self, ctx: SessionContext, registry: ToolRegistry, params: ToolParams | None = None) -> None:
        super().__init__(ctx)
        self.registry = registry
        self.params = params or ToolParams()
        self.lives = ReplyLedger()
        """Which replies were committed or cancelled, whatever order the two lanes brought the news in."""
        self.replies: dict[str, _ReplyCalls] = {}

    async def handle(self, event: Event) -> None:
        if isinstance(event, (StartReply, CommitReply, CancelReply, PlayoutDone, PlayoutStopped)):
            self.lives.observe(event)
        if isinstance(event, StartReply):
            if self.lives.may_run(event.reply_id):  # not when its cancel came first
                self.replies[event.reply_id] = _ReplyCalls()
        elif isinstance(event, ToolCallRequested):
            self._request(event)
        elif isinstance(event, CancelReply):
            self._end_reply(event.reply_id, f"its reply was cancelled ({event.reason})")
        elif isinstance(event, PlayoutDone):
            self._run_deferred(event.reply_id)
        elif isinstance(event, PlayoutStopped):
            self._end_reply(event.reply_id, "its reply was not played to the end")

    # ------------------------------------------------------------ requests

    def _result(self, request: ToolCallRequested, status: ToolStatus, content: str, latency_ms: float = 0.0) -> None:
        self.emit(
            ToolResult,
            turn_id=request.turn_id,
            reply_id=request.reply_id,
            call_id=request.call_id,
            name=request.name,
            status=status.value,
            content=content,
            latency_ms=latency_ms,
        )
        self.ctx.metrics.incr("tools.result", tool=request.name or "?", status=status.value)

    def _fail(self, request: ToolCallRequested, status: ToolStatus, problem: str, latency_ms: float = 0.0) -> None:
        """A failure the user will hear about: an error event, and the problem as the result."""
        self.emit(
            ErrorEvent,
            turn_id=request.turn_id,
            source=self.name,
            message=f"tool call {request.name or '?'} on reply {request.reply_id}: {problem}",
        )
        self._result(request, status, f"{status.value}: {problem}", latency_ms)

    def _request(self, request: ToolCallRequested) -> None:
        reply = self.replies.get(request.reply_id)
        tool = self.registry.lookup(request.name)
        if reply is None:  # its reply already ended: a cancel overtook this request on the bus
            dead = "its reply was cancelled before the call arrived"
            if tool is not None and not tool.read_only:
                self.ctx.metrics.incr("tools.side_effect_prevented", tool=tool.name)
                self._result(request, ToolStatus.PREVENTED, f"not run: {dead}")
            else:
                self._result(request, ToolStatus.CANCELLED, f"not run: {dead}")
            return
        reply.n_calls += 1
        if request.parse_error:
            self._fail(request, ToolStatus.INVALID, f"malformed call: {request.parse_error}")
            return
        if tool is None:
            known = ", ".join(t.name for t in self.registry) or "none"
            self._fail(request, ToolStatus.INVALID, f"no such tool is allowed (allowed: {known})")
            return
        if reply.n_calls > self.params.max_calls_per_reply:
            self._fail(
                request,
                ToolStatus.INVALID,
                f"more than {self.params.max_calls_per_reply} calls in one reply; this one is refused",
            )
            return
        try:
            arguments = tool.validate(request.arguments)
        except ToolArgumentsError as exc:
            self._fail(request, ToolStatus.INVALID, str(exc))
            return
        if tool.read_only:
            self._start(reply, request, tool, arguments)
        else:
            reply.deferred[request.call_id] = _Deferred(request, tool, arguments)
            self.emit(
                ToolCallDeferred,
                turn_id=request.turn_id,
                reply_id=request.reply_id,
                call_id=request.call_id,
                name=request.name,
            )

    # ------------------------------------------------------------ running

    def _start(self, reply: _ReplyCalls, request: ToolCallRequested, tool: Tool, arguments: dict[str, Any]) -> None:
        self.emit(
            ToolCallStarted,
            turn_id=request.turn_id,
            reply_id=request.reply_id,
            call_id=request.call_id,
            name=tool.name,
            read_only=tool.read_only,
            speculative=not self.lives.committed(request.reply_id),
        )
        task = self.spawn(self._run(reply, request, tool, arguments), f"{request.call_id}:{tool.name}")
        reply.running[request.call_id] = (task, request)

    async def _run(self, reply: _ReplyCalls, request: ToolCallRequested, tool: Tool, arguments: dict[str, Any]) -> None:
        clock = self.ctx.clock
        started_ms = clock.now_ms()
        call: asyncio.Future[Any] = asyncio.ensure_future(tool.call(arguments))
        try:
            answered = await wait_on_clock(clock, call, tool.timeout_ms)
        finally:
            if not call.done():
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
        reply.running.pop(request.call_id, None)
        if self.lives.stage(request.reply_id) is ReplyStage.DONE and not reply.running:
            self.replies.pop(request.reply_id, None)
        latency_ms = clock.now_ms() - started_ms
        if not answered or call.cancelled():
            self._fail(request, ToolStatus.TIMEOUT, f"no answer within {tool.timeout_ms:.0f} ms", latency_ms)
        elif (error := call.exception()) is not None:
            self._fail(request, ToolStatus.ERROR, f"the tool raised {type(error).__name__}: {error}", latency_ms)
        else:
            self._result(request, ToolStatus.OK, result_text(call.result()), latency_ms)

    def _run_deferred(self, reply_id: str) -> None:
        reply = self.replies.get(reply_id)
        if reply is None:
            return
        for call_id, deferred in list(reply.deferred.items()):
            del reply.deferred[call_id]
            if self.lives.committed(reply_id):
                self._start(reply, deferred.request, deferred.tool, deferred.arguments)
            else:  # a played reply is always committed; refuse rather than trust it
                self._prevent(deferred.request, "its reply was never committed")
        if not reply.running:
            del self.replies[reply_id]

    def _prevent(self, request: ToolCallRequested, why: str) -> None:
        self.ctx.metrics.incr("tools.side_effect_prevented", tool=request.name)
        self._result(request, ToolStatus.PREVENTED, f"not run: {why}")

    def _end_reply(self, reply_id: str, why: str) -> None:
        """The reply is dead: cancel its read-only calls, and its side effects never run."""
        reply = self.replies.pop(reply_id, None)
        if reply is None:
            return
        for task, request in reply.running.values():
            task.cancel()
            self._result(request, ToolStatus.CANCELLED, f"cancelled: {why}")
        reply.running.clear()
        for deferred in reply.deferred.values():
            self._prevent(deferred.request, why)
        reply.deferred.clear()
