"""LLM actor: streams reply text for each prompt; a cancel aborts the engine mid-stream.

Tool calls (Step-Audio 2 ``<tool_call>`` text or OpenAI call fragments) are parsed out of
the stream here, so their text never becomes an :class:`LlmToken` and never reaches TTS.
Each call is published as a :class:`ToolCallRequested`. The text before it (the preface,
"Let me check that.") is flushed to TTS as a clause of its own and plays while the tool
runs. When the results arrive the engine is called again with the call and the results
appended, and the continuation streams on under the *same* reply id, queued behind the
preface: TTS and playout just go on. :class:`LlmDone` comes only after the last round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from duplexer.actors.engines import Message
from duplexer.actors.reply_guard import GuardOutcome, ReplyGuardParams, guarded_stream
from duplexer.actors.tool_calls import (
    ParsedToolCall,
    ToolCallChunk,
    ToolCallingLlmEngine,
    ToolCallStreamParser,
    ToolStatus,
    call_text,
    wait_on_clock,
)
from duplexer.policies.reply import ReplyLedger
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    CancelReply,
    ErrorEvent,
    Event,
    LlmCancelled,
    LlmDone,
    LlmToken,
    PromptReady,
    ToolCallDeferred,
    ToolCallRequested,
    ToolResult,
)

TOOL_ROLE = "tool"
"""Chat role of a tool result in the prompt and the history."""

DEFERRED_RESULT = "scheduled: it runs once this reply has been played to the end, unless the user interrupts"
"""What the model reads for a side-effecting call that waits for the reply to be heard."""


@dataclass(frozen=True)
class LlmParams:
    fallback_reply: str = "Sorry, I lost my train of thought. Could you say that again?"
    """Spoken when the engine fails mid-reply, so the user never waits on silence."""
    tool_error_reply: str = "Sorry, I couldn't do that just now."
    """Spoken when a tool call is malformed, refused or fails, so the reply never stalls."""
    tool_timeout_reply: str = "Sorry, that is taking too long, so let's go on without it."
    """Spoken when a tool does not answer within its timeout."""
    tool_wait_ms: float = 60_000.0
    """Safety net: the longest a reply waits for its calls' results (each tool also has a timeout)."""
    reply_guard: ReplyGuardParams | None = None
    """With it, a reply's first pass repeating an earlier reply is regenerated before it is spoken
    (:mod:`duplexer.actors.reply_guard`); the real models' settings turn it on."""


@dataclass
class _Round:
    """One generation pass of a reply and the calls it made."""

    start_piece: int
    refuse_calls: str = ""
    """Why this pass may not call tools (empty: it may)."""
    calls: list[ToolCallRequested] = field(default_factory=list)
    outcomes: dict[str, ToolResult | ToolCallDeferred | None] = field(default_factory=dict)
    dropped_text: bool = False


class LlmActor(Actor):
    name = "llm"
    subscribes = (PromptReady, CancelReply, ToolResult, ToolCallDeferred)

    def __init__(
        self,
        ctx: SessionContext,
        engine: ToolCallingLlmEngine,
        params: LlmParams | None = None,
        tools: bool = False,
    ) -> None:
        super().__init__(ctx)
        self.engine = engine
        self.params = params or LlmParams()
        self.tools = tools
        """A tool actor answers ToolCallRequested; without one, every call is refused here."""
        self.lives = ReplyLedger()
        """Which replies were cancelled: a cancel can reach this actor before the prompt it cancels."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self.token_counts: dict[str, int] = {}
        self.awaiting: dict[str, asyncio.Future[ToolResult | ToolCallDeferred]] = {}
        self.call_counts: dict[str, int] = {}

    async def handle(self, event: Event) -> None:
        if isinstance(event, PromptReady):
            if not self.lives.may_run(event.reply_id):  # its cancel overtook it on the control lane
                self.log.info("llm_prompt_of_cancelled_reply_dropped", reply_id=event.reply_id)
                return
            self.token_counts[event.reply_id] = 0
            self.running[event.reply_id] = self.spawn(self._generate(event), event.reply_id)
        elif isinstance(event, CancelReply):
            self.lives.observe(event)
            task = self.running.pop(event.reply_id, None)
            if task is not None and not task.done():
                task.cancel()
                n_tokens = self.token_counts.pop(event.reply_id, 0)
                self.emit(LlmCancelled, turn_id=event.turn_id, reply_id=event.reply_id, n_tokens=n_tokens)
        elif isinstance(event, (ToolResult, ToolCallDeferred)):
            waiter = self.awaiting.pop(event.call_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)

    async def _generate(self, prompt: PromptReady) -> None:
        reply_id, turn_id = prompt.reply_id, prompt.turn_id
        spoken: list[str] = []

        def say(text: str) -> None:
            self.emit(LlmToken, turn_id=turn_id, reply_id=reply_id, text=text, index=len(spoken))
            spoken.append(text)

        messages: tuple[Message, ...] = tuple(prompt.messages)
        n_generated = 0
        n_rounds = 0
        try:
            # Each pass that calls tools needs a successful result to go on, and the tool actor
            # refuses calls beyond its per-reply limit, so a model that keeps calling stops.
            while True:
                current = _Round(len(spoken))
                if not self.tools:
                    current.refuse_calls = "no tools are configured in this session"
                parser = ToolCallStreamParser()
                guard = GuardOutcome()
                first, n_rounds = n_rounds == 0, n_rounds + 1
                async for piece in self._pieces(messages, prompt, guard, first):
                    n_generated += 1
                    self.token_counts[reply_id] = n_generated
                    for item in parser.feed(piece):
                        self._take(item, current, spoken, say, prompt)
                for item in parser.finish():
                    self._take(item, current, spoken, say, prompt)
                if guard.repeats:
                    self.log.info(
                        "llm_repeat_regenerated", reply_id=reply_id, retries=guard.retries, fallback=guard.fallback
                    )
                if not current.calls:
                    break
                if current.dropped_text:
                    self.log.info("llm_text_after_tool_call_dropped", reply_id=reply_id)
                preface = "".join(spoken[current.start_piece :])
                if preface.strip() and not preface.endswith("\n"):
                    say("\n")  # ends the preface's clause, so TTS speaks it while the tool runs
                await self._await_outcomes(current)
                statuses = [_status(o) for o in current.outcomes.values()]
                if any(status is not None and status.failed for status in statuses):
                    timed_out = ToolStatus.TIMEOUT in statuses
                    apology = self.params.tool_timeout_reply if timed_out else self.params.tool_error_reply
                    say((" " if "".join(spoken).strip() else "") + apology)
                if ToolStatus.OK not in statuses:
                    break
                messages = (*messages, *round_messages(preface, current.calls, current.outcomes))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.emit(
                ErrorEvent,
                turn_id=turn_id,
                source=self.name,
                message=f"LLM failed on reply {reply_id}: {type(exc).__name__}: {exc}; speaking the fallback",
            )
            say((" " if spoken else "") + self.params.fallback_reply)
            n_generated += 1
        finally:
            for call_id in [c for c in self.awaiting if c.startswith(f"{reply_id}.")]:
                self.awaiting.pop(call_id).cancel()
            self.call_counts.pop(reply_id, None)
        self.running.pop(reply_id, None)
        self.token_counts.pop(reply_id, None)
        self.emit(LlmDone, turn_id=turn_id, reply_id=reply_id, text="".join(spoken), n_tokens=n_generated)

    def _pieces(
        self, messages: Sequence[Message], prompt: PromptReady, guard: GuardOutcome, first: bool
    ) -> AsyncIterator[str | ToolCallChunk]:
        """The engine's pieces; a reply's first pass goes through the reply guard when one is configured."""
        if self.params.reply_guard is None or not first:
            return self.engine.stream(messages, prompt.reply_id)
        return guarded_stream(
            lambda chosen: self.engine.stream(chosen, prompt.reply_id),
            messages,
            prompt.earlier_replies,
            self.params.reply_guard,
            guard,
        )

    def _take(
        self,
        item: str | ParsedToolCall,
        current: _Round,
        spoken: list[str],
        say: Callable[[str], None],
        prompt: PromptReady,
    ) -> None:
        """Speak text; publish a call. Text after a call in the same pass is a guess at the result: dropped."""
        if isinstance(item, str):
            if current.calls:
                current.dropped_text = current.dropped_text or bool(item.strip())
            else:
                say(item)
            return
        number = self.call_counts[prompt.reply_id] = self.call_counts.get(prompt.reply_id, 0) + 1
        call_id = f"{prompt.reply_id}.c{number}"
        request = self.ctx.make(
            ToolCallRequested,
            turn_id=prompt.turn_id,
            reply_id=prompt.reply_id,
            call_id=call_id,
            name=item.name,
            arguments=item.arguments,
            text_before="".join(spoken),
            call_format=item.call_format,
            parse_error=item.error,
        )
        current.calls.append(request)
        current.outcomes[call_id] = None
        if not current.refuse_calls:
            self.awaiting[call_id] = asyncio.get_running_loop().create_future()
        self.ctx.bus.publish(request)
        if current.refuse_calls:
            self._refuse(request, current, f"malformed call: {item.error}" if item.error else current.refuse_calls)

    def _refuse(self, request: ToolCallRequested, current: _Round, problem: str) -> None:
        """No tool actor runs in this session: the LLM actor answers the call itself, as invalid."""
        self.emit(
            ErrorEvent,
            turn_id=request.turn_id,
            source=self.name,
            message=f"tool call {request.name or '?'} on reply {request.reply_id}: {problem}",
        )
        result = self.ctx.make(
            ToolResult,
            turn_id=request.turn_id,
            reply_id=request.reply_id,
            call_id=request.call_id,
            name=request.name,
            status=ToolStatus.INVALID.value,
            content=f"invalid: {problem}",
        )
        self.ctx.bus.publish(result)
        current.outcomes[request.call_id] = result

    async def _await_outcomes(self, current: _Round) -> None:
        """Wait for every call's result (or deferral), at most ``tool_wait_ms``; a missing one stays None."""
        waiters = {
            call_id: self.awaiting[call_id]
            for call_id, outcome in current.outcomes.items()
            if outcome is None and call_id in self.awaiting
        }
        if waiters:
            all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def check(_: object) -> None:
                if not all_in.done() and all(waiter.done() for waiter in waiters.values()):
                    all_in.set_result(None)

            for waiter in waiters.values():
                waiter.add_done_callback(check)
            check(None)
            await wait_on_clock(self.ctx.clock, all_in, self.params.tool_wait_ms)
            for call_id, waiter in waiters.items():
                if waiter.done() and not waiter.cancelled():
                    current.outcomes[call_id] = waiter.result()
        for request in current.calls:
            if current.outcomes[request.call_id] is None:
                self.awaiting.pop(request.call_id, None)
                self.emit(
                    ErrorEvent,
                    turn_id=request.turn_id,
                    source=self.name,
                    message=(
                        f"tool call {request.name} on reply {request.reply_id}: no result within "
                        f"{self.params.tool_wait_ms:.0f} ms; going on without it"
                    ),
                )


def _status(outcome: ToolResult | ToolCallDeferred | None) -> ToolStatus | None:
    """A result's status; None for a deferred call. A call that never answered counts as timed out."""
    if outcome is None:
        return ToolStatus.TIMEOUT
    return ToolStatus(outcome.status) if isinstance(outcome, ToolResult) else None


def round_messages(
    preface: str,
    calls: Sequence[ToolCallRequested],
    outcomes: dict[str, ToolResult | ToolCallDeferred | None],
) -> tuple[Message, ...]:
    """What the model said and called in one round, then one tool message per result."""
    assistant = preface.rstrip("\n") + "".join(call_text(c.name, c.arguments) for c in calls)
    results: list[Message] = []
    for call in calls:
        outcome = outcomes.get(call.call_id)
        if isinstance(outcome, ToolResult):
            results.append((TOOL_ROLE, outcome.content))
        elif isinstance(outcome, ToolCallDeferred):
            results.append((TOOL_ROLE, DEFERRED_RESULT))
        else:
            results.append((TOOL_ROLE, "timeout: no result"))
    return (("assistant", assistant), *results)
