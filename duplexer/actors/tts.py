"""TTS actor (speech decoder): speaks reply text clause by clause as the LLM streams it.

Text is cut at clause boundaries so the first audio comes after the first
clause, not after the whole reply. A reply that runs on without a clause boundary
("The most famous story about cats is probably the one where ...") has its
opening words cut at a word boundary instead (``first_clause_max_words``), so
the user does not wait for the LLM and TTS to get through a long first sentence.
A speculative reply is pre-rendered when its :class:`StartReply` says so (the
policy's ``speculative_tts``), so a committed reply can play at once.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from duplexer.actors.engines import TtsEngine
from duplexer.policies.reply import ReplyLedger
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    CancelReply,
    CommitReply,
    ErrorEvent,
    Event,
    LlmDone,
    LlmToken,
    SpeakText,
    StartReply,
    TtsAudio,
    TtsDone,
)

CLAUSE_END = re.compile(r"[.!?;:,](?=\s)|[.!?]$|\n")
INSTRUCTION_TAG = re.compile(r"^\s*\(\s*([A-Za-z][A-Za-z _-]{0,30}?)\s*\)")
"""A Step-Audio-style instruction at the start of a reply, e.g. "(slow)" or "(happy)"."""
MAX_TAG_CHARS = 34
"""An opening parenthesis unclosed after this many characters is text, not a tag."""
MIN_CLAUSE_CHARS = 12
"""Shorter clauses wait for more text, so Piper-like engines get enough context."""
_OPENING_WORDS = "\\s*(?:\\S+\\s+){%d}"
_OPENERS = "\"'(\u201c\u2018["


@dataclass(frozen=True)
class TtsParams:
    default_instructions: tuple[str, ...] = ()
    """Tags applied to every reply (a persona's speaking rate, say), before the reply's own."""
    first_clause_max_words: int = 4
    """A reply's first clause is cut after this many words if no clause boundary came sooner
    (0: never). On 2 CPU cores each word costs ~30-60 ms of LLM and ~15 ms of TTS before any audio;
    4 words (~1.2 s of speech) still give the next clause time to render while they play."""


def split_instructions(text: str) -> tuple[tuple[str, ...], str]:
    """Leading instruction tags and the text without them: "(slow) (happy) Hi" -> (("slow", "happy"), "Hi")."""
    tags: list[str] = []
    while match := INSTRUCTION_TAG.match(text):
        tags.append(match.group(1).strip().lower())
        text = text[match.end() :]
    return tuple(tags), text.lstrip()


@dataclass
class _Reply:
    turn_id: int | None
    prerender: bool
    """Render before the reply is committed (from its StartReply)."""
    pending: str = ""
    instructions: tuple[str, ...] | None = None  # None until the reply's opening text is seen
    n_clauses: int = 0
    clauses: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None


def split_clauses(text: str, final: bool) -> tuple[list[str], str]:
    """Complete clauses in ``text`` and the remainder still being written."""
    clauses: list[str] = []
    start = 0
    for match in CLAUSE_END.finditer(text):
        end = match.end()
        if len(text[start:end].strip()) >= MIN_CLAUSE_CHARS:
            clauses.append(text[start:end].strip())
            start = end
    rest = text[start:]
    if final and rest.strip():
        clauses.append(rest.strip())
        rest = ""
    return clauses, rest


def split_opening(text: str, max_words: int) -> tuple[str | None, str]:
    """The first ``max_words`` complete words of ``text`` (each followed by whitespace) and the rest;
    ``None`` and ``text`` while fewer have arrived."""
    if max_words <= 0:
        return None, text
    match = re.match(_OPENING_WORDS % max_words, text)
    if match is None:
        return None, text
    opening, rest = match.group(0).strip(), text[match.end() :]
    head, _, last = opening.rpartition(" ")
    if head and last[0] in _OPENERS:  # never end on an opening quote or bracket: leave it to the next clause
        return head.strip(), last + " " + rest
    return opening, rest


class TtsActor(Actor):
    name = "tts"
    subscribes = (StartReply, CommitReply, CancelReply, LlmToken, LlmDone, SpeakText)

    def __init__(self, ctx: SessionContext, engine: TtsEngine, params: TtsParams | None = None) -> None:
        super().__init__(ctx)
        self.engine = engine
        self.params = params or TtsParams()
        self.lives = ReplyLedger()
        self.replies: dict[str, _Reply] = {}

    def _may_render(self, reply_id: str, reply: _Reply) -> bool:
        return reply.prerender or self.lives.committed(reply_id)

    async def handle(self, event: Event) -> None:
        if isinstance(event, (StartReply, SpeakText, CommitReply, CancelReply)):
            self.lives.observe(event)
        if isinstance(event, StartReply):
            if self.lives.may_run(event.reply_id):  # not when its cancel came first
                self.replies[event.reply_id] = _Reply(event.turn_id, event.prerender)
            return
        if isinstance(event, SpeakText):
            self._speak(event)
            return
        reply = self.replies.get(getattr(event, "reply_id", ""))
        if reply is None:
            return
        if isinstance(event, CancelReply):
            del self.replies[event.reply_id]
            if reply.worker is not None:
                reply.worker.cancel()
        elif isinstance(event, LlmToken):
            text = reply.pending + event.text
            if reply.instructions is None:
                tags, rest = split_instructions(text)
                if rest.startswith("(") and ")" not in rest and len(rest) <= MAX_TAG_CHARS:
                    reply.pending = text  # a tag is still arriving
                    return
                reply.instructions = self.params.default_instructions + tags
                text = rest
            clauses, reply.pending = split_clauses(text, final=False)
            if not clauses and reply.n_clauses == 0:
                opening, reply.pending = split_opening(reply.pending, self.params.first_clause_max_words)
                clauses = [opening] if opening else []
            self._queue(reply, clauses)
        elif isinstance(event, LlmDone):
            if reply.instructions is None:
                tags, reply.pending = split_instructions(reply.pending)
                reply.instructions = self.params.default_instructions + tags
            clauses, reply.pending = split_clauses(reply.pending, final=True)
            self._queue(reply, clauses)
            reply.clauses.put_nowait(None)
        if (
            reply.worker is None
            and isinstance(event, (CommitReply, LlmToken, LlmDone))
            and self._may_render(event.reply_id, reply)
        ):
            reply.worker = self.spawn(self._render(event.reply_id, reply), event.reply_id)  # type: ignore[attr-defined]

    @staticmethod
    def _queue(reply: _Reply, clauses: list[str]) -> None:
        for clause in clauses:
            reply.clauses.put_nowait(clause)
        reply.n_clauses += len(clauses)

    def _speak(self, event: SpeakText) -> None:
        """Fixed text (a greeting): all its clauses are known, so rendering starts at once."""
        tags, text = split_instructions(event.text)
        reply = _Reply(event.turn_id, prerender=True)
        reply.instructions = self.params.default_instructions + tags
        for clause in split_clauses(text, final=True)[0]:
            reply.clauses.put_nowait(clause)
        reply.clauses.put_nowait(None)
        self.replies[event.reply_id] = reply
        reply.worker = self.spawn(self._render(event.reply_id, reply), event.reply_id)

    async def _render(self, reply_id: str, reply: _Reply) -> None:
        seq = 0
        while (clause := await reply.clauses.get()) is not None:
            instructions = reply.instructions or self.params.default_instructions
            unrendered = tuple(t for t in instructions if t not in self.engine.renderable_instructions)
            try:
                async for pcm in self.engine.synthesize(clause, reply_id, instructions):
                    duration_ms = 1000.0 * (len(pcm) // 2) / self.engine.sample_rate_hz
                    self.emit(
                        TtsAudio,
                        turn_id=reply.turn_id,
                        reply_id=reply_id,
                        seq=seq,
                        pcm=pcm,
                        sample_rate_hz=self.engine.sample_rate_hz,
                        text=clause,
                        duration_ms=duration_ms,
                        instructions=instructions,
                        unrendered_instructions=unrendered,
                    )
                    seq += 1
                    clause = ""  # a clause's text rides on its first chunk only
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.emit(
                    ErrorEvent,
                    turn_id=reply.turn_id,
                    source=self.name,
                    message=f"TTS failed on reply {reply_id}: {type(exc).__name__}: {exc}; clause skipped",
                )
        self.emit(TtsDone, turn_id=reply.turn_id, reply_id=reply_id, n_chunks=seq)
        self.replies.pop(reply_id, None)
