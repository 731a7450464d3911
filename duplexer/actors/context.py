"""Context manager: the conversation's text history, and the actor around it.

History is text, not audio tokens. Speculative replies are built from the
committed history plus the current transcript, so every speculative call of a
turn shares a byte-identical prompt prefix. An interrupted reply enters history
only as the words that were actually played.

Tool calls enter history as text too, where they happened in the reply: the words
played before a call, then the call (``<tool_call>...</tool_call>``), then one ``tool``
message per result, then the words after. A result that comes after its reply was played
(a deferred side effect) is recorded when it arrives.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from duplexer.actors.engines import Message
from duplexer.actors.llm import TOOL_ROLE
from duplexer.actors.tool_calls import call_text
from duplexer.actors.tts import split_instructions
from duplexer.policies.reply import RESUMED_AFTER_COMMIT, ReplyLedger
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    CancelReply,
    CommitReply,
    Event,
    HistoryUpdated,
    PlayoutDone,
    PromptReady,
    SpeakText,
    StartReply,
    ToolCallRequested,
    ToolResult,
    TruncateHistory,
    TtsAudio,
)

DEFAULT_SYSTEM_PROMPT = (
    "You are Robin, a friendly voice assistant. You are software: no body, no home, no school, no job. "
    "Answer what was asked in one or two short spoken sentences, without lists, markup or emoji."
)
"""An identity the bot can answer personal questions with ("Do you drive?"): without one, SmolLM2-135M
answers them by reciting its instructions ("I'm a helpful voice assistant...")."""

DEFAULT_EXAMPLES: tuple[Message, ...] = (
    ("user", "Do you like coffee?"),
    ("assistant", "Sadly no, I can't drink anything. Do you like it?"),
    ("user", "Do you have a car?"),
    ("assistant", "No car for me, I live in your phone. Where would you drive?"),
)
"""Example turns after the default system prompt: a small model follows shown answers (short, in
character, a question back) far better than described ones. They are a fixed prompt prefix, so
llama.cpp keeps them in its KV cache."""

RECENT_REPLIES = 0
"""Past replies kept in the prompt (the user's messages all stay). SmolLM2-135M copies its own earlier
turns: on the 18 VAP questions of one voice, keeping the last reply (cut to its first sentence) made
8 of 18 replies repeats that the guard had to regenerate, keeping none made 2, and the first token
came at p50 ~930 ms against ~220 ms (same machine, one after the other)."""

GUARDED_REPLIES = 200
"""How many of the conversation's replies the reply guard compares a new reply against."""

_SENTENCE_END = re.compile(r"[.!?](?=\s)")


@dataclass
class _Spoken:
    """A reply's clauses with their audio span, to map a play position back to words."""

    turn_id: int | None
    """The user turn the reply answers: its words enter history under it, even when a barge-in (which
    starts the next turn) is what ends it."""
    clauses: list[tuple[str, float, float]] = field(default_factory=list)  # text, start_ms, end_ms
    total_ms: float = 0.0

    def add(self, text: str, duration_ms: float) -> None:
        if text or not self.clauses:
            self.clauses.append((text, self.total_ms, self.total_ms + duration_ms))
        else:  # a continuation chunk of the previous clause
            last_text, start, end = self.clauses[-1]
            self.clauses[-1] = (last_text, start, end + duration_ms)
        self.total_ms += duration_ms

    def text(self) -> str:
        return " ".join(t for t, _, _ in self.clauses if t)

    def played_text(self, played_ms: float) -> str:
        """Words whose audio was fully played, assuming words spread evenly across their clause."""
        words_out: list[str] = []
        for text, start, end in self.clauses:
            words = text.split()
            if not words:
                continue
            if played_ms >= end:
                words_out += words
                continue
            span = max(end - start, 1e-9)
            n_played = int(len(words) * (played_ms - start) / span) if played_ms > start else 0
            words_out += words[:n_played]
            break
        return " ".join(words_out)


def first_sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of ``text`` (all of it when it has fewer)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[n - 1]] if len(ends) >= n else text


def trim_history(history: Sequence[Message], recent_replies: int | None, reply_sentences: int = 1) -> list[Message]:
    """The history as the model sees it: every user message, only the last ``recent_replies``
    assistant messages (the tool results after a dropped one go with it), each cut to its first
    ``reply_sentences`` sentences unless it holds a tool call. None keeps everything as it is."""
    if recent_replies is None:
        return list(history)
    assistant_at = [i for i, (role, _) in enumerate(history) if role == "assistant"]
    kept = set(assistant_at[len(assistant_at) - recent_replies :]) if recent_replies > 0 else set()
    out: list[Message] = []
    dropping = False
    for i, (role, text) in enumerate(history):
        if role == "assistant":
            dropping = i not in kept
            if not dropping:
                out.append((role, text if "<tool_call>" in text else first_sentences(text, reply_sentences)))
        elif role == TOOL_ROLE:
            if not dropping:
                out.append((role, text))
        else:
            dropping = False
            out.append((role, text))
    return out


class ContextManager:
    """Text history with a fixed system prompt; the engine behind :class:`ContextActor`.

    ``examples`` are turns shown after the system prompt (None: :data:`DEFAULT_EXAMPLES` with the
    default prompt, none with any other); ``recent_replies`` is how many past replies the prompt keeps
    (:func:`trim_history`; None: all of them, whole).
    """

    def __init__(
        self,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_messages: int = 40,
        examples: Sequence[Message] | None = None,
        recent_replies: int | None = RECENT_REPLIES,
    ) -> None:
        self.system_prompt = system_prompt
        self.max_messages = max_messages
        default_examples = DEFAULT_EXAMPLES if system_prompt == DEFAULT_SYSTEM_PROMPT else ()
        self.examples: tuple[Message, ...] = default_examples if examples is None else tuple(examples)
        self.recent_replies = recent_replies
        self.history: list[Message] = []
        self.replies: list[str] = []
        """Every reply of the conversation (the last :data:`GUARDED_REPLIES`), for the reply guard."""

    def prompt(self, user_text: str) -> tuple[Message, ...]:
        """Messages for a reply: system, examples, trimmed history, then the (possibly still changing)
        user text. Speculative calls of one turn share all but the last message."""
        history = trim_history(self.history, self.recent_replies)
        return (("system", self.system_prompt), *self.examples, *history, ("user", user_text))

    def retract(self, message: Message) -> None:
        """Take back the latest ``message`` (a user turn that turned out not to be over)."""
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i] == message:
                del self.history[i]
                return

    def add(self, role: str, text: str) -> None:
        self.history.append((role, text))
        excess = len(self.history) - self.max_messages
        if excess > 0:
            del self.history[:excess]
        if role == "assistant" and text.strip():
            self.replies.append(text)
            del self.replies[:-GUARDED_REPLIES]


@dataclass
class _Call:
    """A tool call of a reply: how many spoken words preceded it, its text, and its result once known."""

    call_id: str
    words_before: int
    text: str
    result: str | None = None


class ContextActor(Actor):
    name = "context"
    subscribes = (
        StartReply,
        CommitReply,
        CancelReply,
        TtsAudio,
        PlayoutDone,
        TruncateHistory,
        ToolCallRequested,
        ToolResult,
        SpeakText,
    )

    def __init__(self, ctx: SessionContext, manager: ContextManager | None = None) -> None:
        super().__init__(ctx)
        self.manager = manager or ContextManager()
        self.lives = ReplyLedger()
        """Which replies were committed or cancelled: only a committed reply's words enter history."""
        self.spoken: dict[str, _Spoken] = {}
        self.calls: dict[str, list[_Call]] = {}
        self.committed_user: dict[str, Message] = {}
        """The user message each live committed reply answers, until the reply ends."""
        self.late_results: dict[str, int | None] = {}
        """Calls of finished replies whose result is still to come: call id -> turn id."""

    def _record(self, role: str, text: str, turn_id: int | None) -> None:
        self.manager.add(role, text)
        self.emit(HistoryUpdated, turn_id=turn_id, role=role, text=text)

    async def handle(self, event: Event) -> None:
        if isinstance(event, (StartReply, CommitReply, CancelReply, SpeakText, PlayoutDone)):
            self.lives.observe(event)
        if isinstance(event, StartReply):
            if not self.lives.may_run(event.reply_id):  # its cancel came first: no prompt for it
                return
            self.spoken[event.reply_id] = _Spoken(event.turn_id)
            self.emit(
                PromptReady,
                turn_id=event.turn_id,
                reply_id=event.reply_id,
                messages=self.manager.prompt(event.user_text),
                earlier_replies=tuple(self.manager.replies),
            )
        elif isinstance(event, CommitReply):
            self._record("user", event.user_text, event.turn_id)
            self.committed_user[event.reply_id] = ("user", event.user_text)
        elif isinstance(event, SpeakText):  # the bot speaks first: history keeps what is played
            self.spoken[event.reply_id] = _Spoken(event.turn_id)
        elif isinstance(event, CancelReply):
            user_message = self.committed_user.pop(event.reply_id, None)
            if event.reason == RESUMED_AFTER_COMMIT:  # the user went on: neither side of it happened
                if user_message is not None:
                    self.manager.retract(user_message)
                self.spoken.pop(event.reply_id, None)
                self.calls.pop(event.reply_id, None)
            elif not self.lives.committed(event.reply_id):
                self.spoken.pop(event.reply_id, None)
                self.calls.pop(event.reply_id, None)
        elif isinstance(event, ToolCallRequested):
            if event.reply_id in self.spoken:
                _, said = split_instructions(event.text_before)  # tags are not spoken words
                call = _Call(event.call_id, len(said.split()), call_text(event.name, event.arguments))
                self.calls.setdefault(event.reply_id, []).append(call)
        elif isinstance(event, ToolResult):
            self._result(event)
        elif isinstance(event, TtsAudio):
            spoken = self.spoken.get(event.reply_id)
            if spoken is not None:
                spoken.add(event.text, event.duration_ms)
        elif isinstance(event, PlayoutDone):
            self.committed_user.pop(event.reply_id, None)
            self._finish(event.reply_id, None)
        elif isinstance(event, TruncateHistory):
            self.committed_user.pop(event.reply_id, None)
            self._finish(event.reply_id, event.played_ms)

    def _finish(self, reply_id: str, played_ms: float | None) -> None:
        spoken = self.spoken.pop(reply_id, None)
        if spoken is None or not self.lives.committed(reply_id):
            return
        turn_id = spoken.turn_id
        text = spoken.text() if played_ms is None else spoken.played_text(played_ms)
        calls = self.calls.pop(reply_id, [])
        words, said = text.split(), 0
        for words_before, group in itertools.groupby(calls, key=lambda call: call.words_before):
            # One round: the words before its calls (as far as they were played), the calls, their results.
            round_calls = list(group)
            before = " ".join(words[said:words_before])
            said = max(said, min(words_before, len(words)))
            self._record("assistant", " ".join([before, *(c.text for c in round_calls)]).strip(), turn_id)
            for call in round_calls:
                if call.result is not None:
                    self._record(TOOL_ROLE, call.result, turn_id)
                else:
                    self.late_results[call.call_id] = turn_id
        rest = " ".join(words[said:]) if calls else text
        if rest:
            self._record("assistant", rest, turn_id)

    def _result(self, result: ToolResult) -> None:
        if result.call_id in self.late_results:
            self._record(TOOL_ROLE, result.content, self.late_results.pop(result.call_id))
            return
        for call in self.calls.get(result.reply_id, []):
            if call.call_id == result.call_id:
                call.result = result.content
