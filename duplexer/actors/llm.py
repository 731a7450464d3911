"""LLM actor: streams reply text for each prompt; a cancel aborts the engine mid-stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from duplexer.actors.engines import LlmEngine
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    CancelReply,
    ErrorEvent,
    Event,
    LlmCancelled,
    LlmDone,
    LlmToken,
    PromptReady,
)


@dataclass(frozen=True)
class LlmParams:
    fallback_reply: str = "Sorry, I lost my train of thought. Could you say that again?"
    """Spoken when the engine fails mid-reply, so the user never waits on silence."""


class LlmActor(Actor):
    name = "llm"
    subscribes = (PromptReady, CancelReply)

    def __init__(self, ctx: SessionContext, engine: LlmEngine, params: LlmParams | None = None) -> None:
        super().__init__(ctx)
        self.engine = engine
        self.params = params or LlmParams()
        self.running: dict[str, asyncio.Task[None]] = {}
        self.token_counts: dict[str, int] = {}

    async def handle(self, event: Event) -> None:
        if isinstance(event, PromptReady):
            self.token_counts[event.reply_id] = 0
            self.running[event.reply_id] = self.spawn(self._generate(event), event.reply_id)
        elif isinstance(event, CancelReply):
            task = self.running.pop(event.reply_id, None)
            if task is not None and not task.done():
                task.cancel()
                n_tokens = self.token_counts.pop(event.reply_id, 0)
                self.emit(LlmCancelled, turn_id=event.turn_id, reply_id=event.reply_id, n_tokens=n_tokens)

    async def _generate(self, prompt: PromptReady) -> None:
        reply_id, turn_id = prompt.reply_id, prompt.turn_id
        pieces: list[str] = []
        try:
            async for piece in self.engine.stream(prompt.messages, reply_id):
                self.emit(LlmToken, turn_id=turn_id, reply_id=reply_id, text=piece, index=len(pieces))
                pieces.append(piece)
                self.token_counts[reply_id] = len(pieces)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.emit(
                ErrorEvent,
                turn_id=turn_id,
                source=self.name,
                message=f"LLM failed on reply {reply_id}: {type(exc).__name__}: {exc}; speaking the fallback",
            )
            fallback = (" " if pieces else "") + self.params.fallback_reply
            self.emit(LlmToken, turn_id=turn_id, reply_id=reply_id, text=fallback, index=len(pieces))
            pieces.append(fallback)
        self.running.pop(reply_id, None)
        self.token_counts.pop(reply_id, None)
        self.emit(LlmDone, turn_id=turn_id, reply_id=reply_id, text="".join(pieces), n_tokens=len(pieces))
