"""The context manager keeps text history; interrupted replies keep only the played words."""

from __future__ import annotations

from duplexer.actors.context import ContextActor, ContextManager, _Spoken
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    CommitReply,
    Event,
    HistoryUpdated,
    PromptReady,
    StartReply,
    TruncateHistory,
    TtsAudio,
)
from duplexer.runtime.session import Session


def test_speculative_prompts_share_a_byte_identical_history_prefix() -> None:
    cm = ContextManager(system_prompt="Be brief.")
    cm.add("user", "hello")
    cm.add("assistant", "hi there")
    first = cm.prompt("what is the")
    second = cm.prompt("what is the time")
    assert first[:-1] == second[:-1]
    assert repr(first[:-1]).encode() == repr(second[:-1]).encode()
    assert first[-1] == ("user", "what is the") and second[-1] == ("user", "what is the time")


def test_played_text_keeps_only_fully_played_words() -> None:
    spoken = _Spoken(turn_id=1)
    spoken.add("The capital of France", 1000.0)  # 4 words, 250 ms each
    spoken.add("", 200.0)  # continuation audio of the same clause
    spoken.add("is Paris.", 600.0)
    assert spoken.text() == "The capital of France is Paris."
    assert spoken.played_text(0.0) == ""
    assert spoken.played_text(600.0) == "The capital"
    assert spoken.played_text(1200.0) == "The capital of France"
    assert spoken.played_text(1500.0) == "The capital of France is"
    assert spoken.played_text(10_000.0) == "The capital of France is Paris."


def test_history_is_bounded() -> None:
    cm = ContextManager(max_messages=4)
    for i in range(10):
        cm.add("user", str(i))
    assert [text for _, text in cm.history] == ["6", "7", "8", "9"]


def test_an_interrupted_reply_enters_history_under_the_turn_it_answered() -> None:
    """The barge-in that cuts a reply starts the next turn, so its TruncateHistory carries that turn's id."""

    async def conversation() -> list[Event]:
        clock = LoopClock()
        async with Session("s", clock=clock) as session:
            heard = session.bus.subscribe("test", (HistoryUpdated,), maxsize=100)
            session.add(ContextActor(session.ctx))
            emit = session.ctx.emit
            emit(StartReply, turn_id=2, reply_id="t2r1", user_text="recommend a book", speculative=False)
            emit(CommitReply, turn_id=2, reply_id="t2r1", user_text="recommend a book")
            emit(
                TtsAudio,
                turn_id=2,
                reply_id="t2r1",
                pcm=b"",
                sample_rate_hz=16000,
                text="Read Dune today.",
                duration_ms=900.0,
                seq=0,
            )
            await clock.sleep_ms(10.0)
            emit(TruncateHistory, turn_id=3, reply_id="t2r1", played_ms=450.0)
            await clock.sleep_ms(10.0)
            events: list[Event] = []
            while (event := heard.get_nowait()) is not None:
                events.append(event)
        return events

    history = run_virtual(conversation())
    assert [(e.role, e.text, e.turn_id) for e in history] == [("user", "recommend a book", 2), ("assistant", "Read", 2)]


def test_the_prompt_keeps_every_question_but_only_the_recent_replies_cut_to_a_sentence() -> None:
    from duplexer.actors.context import trim_history

    history = [
        ("user", "q1"),
        ("assistant", "Old reply. More."),
        ("user", "q2"),
        ("assistant", 'Let me look. <tool_call>{"name": "f"}</tool_call>'),
        ("tool", "result"),
        ("assistant", "Last reply. And more."),
        ("user", "q3"),
    ]
    assert trim_history(history, None) == history
    assert trim_history(history, 0) == [("user", "q1"), ("user", "q2"), ("user", "q3")]
    assert trim_history(history, 1) == [("user", "q1"), ("user", "q2"), ("assistant", "Last reply."), ("user", "q3")]
    assert trim_history(history, 2) == [
        ("user", "q1"),
        ("user", "q2"),
        history[3],  # a tool call is kept whole, with its result
        ("tool", "result"),
        ("assistant", "Last reply."),
        ("user", "q3"),
    ]


def test_the_default_prompt_shows_example_turns_and_the_manager_keeps_every_reply() -> None:
    from duplexer.actors.context import DEFAULT_EXAMPLES

    cm = ContextManager()
    cm.add("user", "do you study")
    cm.add("assistant", "No, I don't.")
    prompt = cm.prompt("are you a student")
    assert prompt[1 : 1 + len(DEFAULT_EXAMPLES)] == DEFAULT_EXAMPLES
    assert prompt[-2:] == (("user", "do you study"), ("user", "are you a student"))
    assert cm.replies == ["No, I don't."]
    assert ContextManager(system_prompt="Be a pirate.").prompt("hi") == (("system", "Be a pirate."), ("user", "hi"))


def test_a_prompt_carries_the_conversation_s_earlier_replies_for_the_guard() -> None:
    async def conversation() -> list[Event]:
        clock = LoopClock()
        async with Session("s", clock=clock) as session:
            heard = session.bus.subscribe("test", (PromptReady,), maxsize=100)
            manager = ContextManager()
            manager.add("assistant", "Hello there.")
            session.add(ContextActor(session.ctx, manager))
            session.ctx.emit(StartReply, turn_id=1, reply_id="t1r1", user_text="hi", speculative=False)
            await clock.sleep_ms(10.0)
            events: list[Event] = []
            while (event := heard.get_nowait()) is not None:
                events.append(event)
        return events

    (prompt,) = run_virtual(conversation())
    assert isinstance(prompt, PromptReady) and prompt.earlier_replies == ("Hello there.",)
