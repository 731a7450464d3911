"""`duplexer bench replies`: does the embedded LLM answer what was asked, and never repeat itself?

Per VAP voice, the 18 phrase transcripts (``../shared/data/vap_phrases/audio/*Wavenet-V.txt``, in
name order: each phrase's long form, then its short form) are one conversation. Each goes through
what the live pipeline uses: :class:`ContextManager`'s prompt and history trimming, SmolLM2 on
llama.cpp with :class:`LlamaParams`, and the reply guard with :class:`ReplyGuardParams`. The reply
enters history whole, as a reply played to its end does.

Figures per conversation: distinct replies (normalised words), replies that repeat an earlier one
verbatim (after normalisation), guard retries and fallbacks, and the time from the request to the
first released token and to the first clause TTS would start on (its own clause rule), p50.
``--compare`` runs, voice by voice in the same process, the live settings without the guard (what
the guard costs) and the settings before it (the old prompt, the whole history, temperature 0.3,
repeat penalty 1.3, 80 tokens, no guard).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import LlmEngine, Message
from duplexer.actors.models.llama_llm import LlamaParams
from duplexer.actors.reply_guard import GuardOutcome, ReplyGuardParams, guarded_stream, normalize_words
from duplexer.actors.tts import TtsParams, split_clauses, split_opening
from duplexer.bench.asr import DEFAULT_PHRASES
from duplexer.runtime.console import say

VOICES = ("A", "B", "C", "E", "F")
BEFORE_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one or two short spoken sentences, without lists, markup or emoji."
)
"""The default system prompt before replies were guarded, for ``--compare``."""
BEFORE_LLAMA = LlamaParams(
    max_tokens=80,
    max_sentences=0,
    temperature=0.3,
    top_p=0.95,
    repeat_penalty=1.3,
    presence_penalty=0.0,
    frequency_penalty=0.0,
)
"""The sampling before replies were guarded (llama-cpp-python's defaults but for these)."""
N_PAIRS = 10


@dataclass(frozen=True)
class Variant:
    """One way of producing replies: its prompt and history handling, and whether the guard runs."""

    name: str
    context: ContextManager
    guard: ReplyGuardParams | None


@dataclass
class ReplyRecord:
    question: str
    answer: str
    first_token_ms: float
    first_clause_ms: float
    hold_ms: float
    """From the spoken attempt's first generated piece to its release: what the guard's check costs."""
    retries: int
    fallback: bool


@dataclass
class ConversationResult:
    voice: str
    variant: str
    records: list[ReplyRecord] = field(default_factory=list)

    def distinct(self) -> int:
        return len({normalize_words(r.answer) for r in self.records})

    def verbatim_repeats(self) -> int:
        """Replies equal (after normalisation) to an earlier reply of the conversation."""
        seen: set[tuple[str, ...]] = set()
        repeats = 0
        for record in self.records:
            words = normalize_words(record.answer)
            repeats += words in seen
            seen.add(words)
        return repeats


def live_variant() -> Variant:
    """What the live pipeline runs: the default context manager and the reply guard (``demo_config``)."""
    return Variant("guarded", ContextManager(), ReplyGuardParams())


def unguarded_variant() -> Variant:
    """The live prompt and history without the guard: what the guard's hold and retries cost."""
    return Variant("unguarded", ContextManager(), None)


def before_variant() -> Variant:
    """The settings before the guard: the old prompt, the whole history in the prompt, no guard."""
    return Variant("before", ContextManager(BEFORE_SYSTEM_PROMPT, recent_replies=None), None)


def conversation_questions(phrases: Path, voice: str) -> list[str]:
    """One voice's transcripts in name order: long then short form of each phrase."""
    return [p.read_text(encoding="utf-8").strip() for p in sorted(phrases.glob(f"*Wavenet-{voice}.txt"))]


def first_clause_done(text: str, max_words: int) -> bool:
    """Whether TTS would have a first clause to speak in ``text`` (by the TTS actor's own rules)."""
    clauses, rest = split_clauses(text, final=False)
    return bool(clauses) or split_opening(rest, max_words)[0] is not None


async def _marked(stream: AsyncIterator[str], marks: list[float], start: float) -> AsyncIterator[str]:
    """``stream``, noting when its first piece came (ms after ``start``)."""
    first = True
    async for piece in stream:
        if first:
            marks.append(1000.0 * (time.perf_counter() - start))
            first = False
        yield piece


async def answer(
    llm: LlmEngine, messages: Sequence[Message], earlier: Sequence[str], guard: ReplyGuardParams | None, reply_id: str
) -> tuple[str, float, float, float, GuardOutcome]:
    """One reply as the LLM actor produces it: its text, ms to first piece, to first clause, and held."""
    outcome = GuardOutcome()
    start = time.perf_counter()
    marks: list[float] = []

    def generate(chosen: Sequence[Message]) -> AsyncIterator[str]:
        return _marked(llm.stream(chosen, reply_id), marks, start)

    pieces = generate(messages) if guard is None else guarded_stream(generate, messages, earlier, guard, outcome)
    max_words = TtsParams().first_clause_max_words
    text, first_token_ms, first_clause_ms = "", float("nan"), float("nan")
    async for piece in pieces:
        now_ms = 1000.0 * (time.perf_counter() - start)
        if not isinstance(piece, str):  # the embedded model writes tool calls as text, never as chunks
            continue
        if not text:
            first_token_ms = now_ms
        text += piece
        if first_clause_ms != first_clause_ms and first_clause_done(text, max_words):  # nan: not yet
            first_clause_ms = now_ms
    if first_clause_ms != first_clause_ms:
        first_clause_ms = 1000.0 * (time.perf_counter() - start)
    hold_ms = first_token_ms - marks[-1] if marks and not outcome.fallback else float("nan")
    return text.strip(), first_token_ms, first_clause_ms, hold_ms, outcome


async def run_conversation(
    llm: LlmEngine, questions: Sequence[str], variant: Variant, voice: str
) -> ConversationResult:
    """The questions as one conversation through ``variant``'s history handling, the LLM and the guard."""
    context = ContextManager(
        variant.context.system_prompt,
        variant.context.max_messages,
        variant.context.examples,
        variant.context.recent_replies,
    )
    result = ConversationResult(voice, variant.name)
    for i, question in enumerate(questions):
        reply_id = f"{voice}{i}"
        text, token_ms, clause_ms, hold_ms, outcome = await answer(
            llm, context.prompt(question), context.replies, variant.guard, reply_id
        )
        result.records.append(
            ReplyRecord(question, text, token_ms, clause_ms, hold_ms, outcome.retries, outcome.fallback)
        )
        context.add("user", question)
        context.add("assistant", text)
    return result


def _p50(values: Sequence[float]) -> str:
    return f"{np.nanpercentile(np.asarray(values, dtype=float), 50):.0f}"


def summary_row(result: ConversationResult) -> list[object]:
    records = result.records
    return [
        result.voice,
        result.variant,
        f"{result.distinct()}/{len(records)}",
        result.verbatim_repeats(),
        sum(r.retries for r in records),
        sum(r.fallback for r in records),
        _p50([r.first_token_ms for r in records]),
        _p50([r.first_clause_ms for r in records]),
        _p50([r.hold_ms for r in records]),
        f"{np.nanmax(np.asarray([r.hold_ms for r in records], dtype=float)):.0f}",
    ]


HEADER = (
    "voice",
    "settings",
    "distinct replies",
    "verbatim repeats",
    "guard retries",
    "fallbacks",
    "first token p50 ms",
    "first clause p50 ms",
    "guard hold p50 ms",
    "guard hold max ms",
)


def main(argv: Sequence[str]) -> int:
    from duplexer.actors.models.llama_llm import LlamaLlm
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.bench.log import add_log_arguments, append_benchmark, format_table, log_path_from_args
    from duplexer.cli_support import fail

    parser = argparse.ArgumentParser(prog="duplexer bench replies", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phrases", type=Path, default=DEFAULT_PHRASES, help="folder of VAP phrase .txt files")
    parser.add_argument("--voices", default=",".join(VOICES), help="comma-separated VAP voices (default: all five)")
    parser.add_argument(
        "--compare", action="store_true", help="also run without the guard, and with the settings before it"
    )
    add_log_arguments(parser)
    args = parser.parse_args(argv)
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    conversations = {voice: conversation_questions(args.phrases, voice) for voice in voices}
    missing = [voice for voice, questions in conversations.items() if not questions]
    if missing:
        return fail(f"{args.phrases}: no transcripts for voice(s) {', '.join(missing)}; pass --phrases DIR")
    try:
        llm = LlamaLlm()
        before_llm = LlamaLlm(params=BEFORE_LLAMA) if args.compare else None
    except ModelPackageMissing as exc:
        return fail(str(exc))
    now, unguarded, before = live_variant(), unguarded_variant(), before_variant()
    results: list[ConversationResult] = []
    for voice, questions in conversations.items():
        runs = [(now, llm)] + ([(unguarded, llm), (before, before_llm)] if before_llm is not None else [])
        for variant, engine in runs:
            result = asyncio.run(run_conversation(engine, questions, variant, voice))
            results.append(result)
            say(format_table(HEADER, [summary_row(result)]))
    rows = [summary_row(result) for result in results]
    shown = results[0].records
    step = max(1, len(shown) // N_PAIRS)
    pairs = [f"Q: {r.question} / A: {r.answer}" for r in shown[::step][:N_PAIRS]]
    notes = [
        f"{len(voices)} conversation(s) of {len(conversations[voices[0]])} VAP transcripts each, in name order",
        "distinct: different replies after normalising case, punctuation and contractions; verbatim repeats: "
        "replies equal to an earlier reply of the conversation",
        "first token: request to the first released piece; first clause: to the text TTS starts on; guard hold: "
        "from the spoken attempt's first generated piece to its release; CPU time, noisy when other processes "
        "share the cores",
        f"replies of voice {results[0].voice} ({results[0].variant}):",
        *[f"  {pair}" for pair in pairs],
    ]
    text = append_benchmark(
        "Replies that answer: distinct replies per conversation",
        HEADER,
        rows,
        notes,
        log_path_from_args(args),
        argv=["bench", "replies", *argv],
    )
    say(text)
    return 0
