"""The data channel's wire format: session events as JSON messages, and the order they keep.

Every message is a JSON object with ``type`` and ``t_ms`` (session clock). The
server sends; the client may send ``{"type": "hangup"}``. docs/webrtc.md lists
every message. :func:`order_problems` checks a received log against the order
the server guarantees, for tests and for clients that want to be strict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from duplexer.runtime.events import (
    AsrFinal,
    AsrPartial,
    CancelReply,
    CommitReply,
    ErrorEvent,
    Event,
    HistoryUpdated,
    LlmDone,
    LlmToken,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    StartReply,
    StateChanged,
    VadSpeechStart,
    VadSpeechStop,
)

PROTOCOL_VERSION = 1
INITIAL_STATE = "Silence"

FORWARDED_EVENTS: tuple[type[Event], ...] = (
    StateChanged,
    VadSpeechStart,
    VadSpeechStop,
    AsrPartial,
    AsrFinal,
    StartReply,
    CommitReply,
    CancelReply,
    LlmToken,
    LlmDone,
    PlayoutStarted,
    PlayoutDone,
    PlayoutStopped,
    HistoryUpdated,
    ErrorEvent,
)
"""Session events the server turns into data channel messages."""

MESSAGE_TYPES = frozenset(
    {"hello", "state", "speech", "transcript", "reply", "bot_text", "playout", "history", "metrics", "error", "bye"}
)


def _base(kind: str, event: Event) -> dict[str, Any]:
    return {"type": kind, "t_ms": round(event.ts_ms, 1), "turn_id": event.turn_id}


def event_message(event: Event) -> dict[str, Any] | None:
    """The message for a forwarded session event; None for events that are not forwarded."""
    if isinstance(event, StateChanged):
        return {**_base("state", event), "old": event.old_state, "new": event.new_state, "reason": event.reason}
    if isinstance(event, VadSpeechStart):
        return {**_base("speech", event), "event": "start", "speech_ms": round(event.speech_start_ms, 1)}
    if isinstance(event, VadSpeechStop):
        return {**_base("speech", event), "event": "stop", "speech_ms": round(event.speech_end_ms, 1)}
    if isinstance(event, (AsrPartial, AsrFinal)):
        final = isinstance(event, AsrFinal)
        body = {"role": "user", "segment_id": event.segment_id, "text": event.text, "final": final}
        return {**_base("transcript", event), **body}
    if isinstance(event, StartReply):
        return {
            **_base("reply", event),
            "event": "started",
            "reply_id": event.reply_id,
            "speculative": event.speculative,
        }
    if isinstance(event, CommitReply):
        return {**_base("reply", event), "event": "committed", "reply_id": event.reply_id, "user_text": event.user_text}
    if isinstance(event, CancelReply):
        return {**_base("reply", event), "event": "cancelled", "reply_id": event.reply_id, "reason": event.reason}
    if isinstance(event, LlmToken):
        return {**_base("bot_text", event), "reply_id": event.reply_id, "delta": event.text, "final": False}
    if isinstance(event, LlmDone):
        return {**_base("bot_text", event), "reply_id": event.reply_id, "text": event.text, "final": True}
    if isinstance(event, PlayoutStarted):
        return {**_base("playout", event), "event": "started", "reply_id": event.reply_id}
    if isinstance(event, (PlayoutDone, PlayoutStopped)):
        outcome = "done" if isinstance(event, PlayoutDone) else "stopped"
        body = {"event": outcome, "reply_id": event.reply_id, "played_ms": round(event.played_ms, 1)}
        return {**_base("playout", event), **body}
    if isinstance(event, HistoryUpdated):
        return {**_base("history", event), "role": event.role, "text": event.text}
    if isinstance(event, ErrorEvent):
        return {**_base("error", event), "source": event.source, "message": event.message, "fatal": event.fatal}
    return None


def encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def order_problems(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where a received log breaks the guaranteed order; empty when it keeps it.

    Guaranteed: ``hello`` first and ``bye`` (if any) last; every ``state`` continues
    the one before; per reply, started < committed < playout started < playout done,
    and playout stopped, final text and metrics come after the reply started (a reply
    can be stopped before its first frame played). Data events
    (transcripts, text deltas) may overtake one another's neighbours, so no more is promised.
    """
    problems: list[str] = []
    if not messages or messages[0].get("type") != "hello":
        problems.append("the first message is not hello")
    state = INITIAL_STATE
    seen: dict[str, list[str]] = {}
    for i, msg in enumerate(messages):
        kind = msg.get("type")
        if kind not in MESSAGE_TYPES:
            problems.append(f"message {i}: unknown type {kind!r}")
            continue
        if not isinstance(msg.get("t_ms"), (int, float)):
            problems.append(f"message {i} ({kind}): t_ms is missing")
        if kind == "bye" and i != len(messages) - 1:
            problems.append(f"message {i}: bye is not the last message")
        if kind == "state":
            if msg.get("old") != state:
                problems.append(f"message {i}: state {msg.get('old')}->{msg.get('new')} does not follow {state}")
            state = str(msg.get("new"))
        reply = msg.get("reply_id")
        if not isinstance(reply, str):
            continue
        steps = seen.setdefault(reply, [])
        step = _lifecycle_step(msg)
        if step is None:
            continue
        needs = _LIFECYCLE_NEEDS.get(step, ())
        missing = [need for need in needs if need not in steps]
        if missing:
            problems.append(f"message {i}: reply {reply} {step} before {' and '.join(missing)}")
        steps.append(step)
    return problems


def _lifecycle_step(msg: Mapping[str, Any]) -> str | None:
    kind = msg.get("type")
    if kind == "reply":
        return str(msg.get("event"))
    if kind == "playout":
        return "playout_" + str(msg.get("event"))
    if kind == "bot_text" and msg.get("final"):
        return "text_final"
    if kind == "metrics":
        return "metrics"
    return None


_LIFECYCLE_NEEDS: dict[str, tuple[str, ...]] = {
    "committed": ("started",),
    "playout_started": ("started", "committed"),
    "playout_done": ("playout_started",),
    "playout_stopped": ("started",),
    "text_final": ("started",),
    "metrics": ("started",),
}
