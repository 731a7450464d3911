"""The ``sglang`` LLM backend: SGLang's engine inside this process (``sglang.Engine``), on a GPU.

- A reply is ``await engine.async_generate(prompt=..., sampling_params=..., stream=True, rid=...)``,
  an async iterator of ``{"text", "meta_info"}`` dicts, with a request id of ours.
- A cancel calls ``engine.tokenizer_manager.abort_request(rid)``, so the scheduler drops the
  request and frees its KV cache at once, then closes the iterator.
- The streamed ``text`` is cumulative (the reply so far) by default and incremental when the
  engine runs with ``incremental_streaming_output=True``; ``text_mode="auto"`` reads that
  from the engine's ``server_args`` (older SGLang versions, without the flag, are cumulative).

sglang is imported only when the engine starts, so the rest of duplexer never needs it; a
machine without it gets a message naming the package and the server alternative.

Prompts: ``model`` (the default) renders with the model's own chat template through the
engine's tokenizer; ``chatml`` and ``step-audio`` render here and are prefix-stable by
construction (:mod:`duplexer.actors.llm_prompt`). Mainstream chat templates are
concatenations of per-message turns too; :func:`duplexer.actors.llm_prompt.history_prefix`
is how the tests check a format.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from duplexer.actors.engines import Message
from duplexer.actors.llm_http_client import (
    LlmServerError,
    LlmServerStats,
    LlmServerTimeout,
    LlmStreamBroken,
    RequestOutcome,
    RequestRecord,
    Timeouts,
    absorb_usage,
    new_request_id,
)
from duplexer.actors.llm_openai import openai_tool_messages
from duplexer.actors.llm_prompt import PROMPT_FORMATS, render_prompt
from duplexer.actors.llm_sglang_client import TEXT_MODES, SglangChunks, TextMode, sampling_params
from duplexer.actors.models.packages import ModelPackageMissing
from duplexer.runtime.logging import get_logger

EnginePromptFormat = Literal["model", "chatml", "step-audio"]
SGLANG_MISSING = (
    "the sglang LLM backend runs SGLang in this process and needs it installed on a CUDA machine: "
    "pip install 'sglang[all]' (or start python -m sglang.launch_server there and use the sglang-server backend)"
)


@dataclass(frozen=True)
class SglangEngineConfig:
    model_path: str = ""
    """A Hugging Face model folder or id, as ``sglang.launch_server --model-path`` takes it."""
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    """More ``sglang.Engine`` arguments (its ServerArgs fields: ``tp_size``, ``mem_fraction_static`` ...)."""
    prompt_format: EnginePromptFormat = "model"
    max_new_tokens: int = 80
    temperature: float = 0.3
    text_mode: TextMode = "auto"
    sampling_params: Mapping[str, Any] = field(default_factory=dict)
    tools: tuple[Mapping[str, Any], ...] = ()
    """OpenAI ``tools`` entries, given to the model's chat template (``prompt_format="model"``) with the
    history's calls and results in OpenAI's shape; the model writes its calls as text (``<tool_call>``)."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """``first_token_s`` and ``stall_s`` apply; the others are for servers."""

    def __post_init__(self) -> None:
        if self.prompt_format not in ("model", *PROMPT_FORMATS):
            raise ValueError(
                f"sglang prompt_format {self.prompt_format!r} is not one of model, {', '.join(PROMPT_FORMATS)}"
            )
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"sglang text_mode {self.text_mode!r} is not one of {', '.join(TEXT_MODES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sglang max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.tools and self.prompt_format != "model":
            raise ValueError("sglang tools go through the model's chat template: set prompt_format to model")


def import_sglang() -> Any:
    try:
        return importlib.import_module("sglang")
    except ImportError as exc:
        raise ModelPackageMissing(SGLANG_MISSING) from exc


class SglangInProcessLlm:
    """Streams replies from an in-process ``sglang.Engine``; ``engine`` may be given (shared, or a test double)."""

    def __init__(self, config: SglangEngineConfig | None = None, engine: Any = None) -> None:
        self.config = config or SglangEngineConfig()
        self.engine = engine
        self.stats = LlmServerStats()
        self.log = get_logger(component="llm_sglang")

    def start(self) -> Any:
        """Load the model now (blocking, minutes for a large one): do it at startup, not on the first turn."""
        if self.engine is None:
            if not self.config.model_path:
                raise ValueError("the sglang backend needs model_path (a Hugging Face model folder or id)")
            sglang = import_sglang()
            self.engine = sglang.Engine(model_path=self.config.model_path, **dict(self.config.engine_args))
        return self.engine

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def _incremental(self, engine: Any) -> bool:
        if self.config.text_mode != "auto":
            return self.config.text_mode == "incremental"
        return bool(getattr(getattr(engine, "server_args", None), "incremental_streaming_output", False))

    def _prompt(self, engine: Any, messages: Sequence[Message]) -> str:
        if self.config.prompt_format != "model":
            return render_prompt(self.config.prompt_format, messages)
        tokenizer = getattr(getattr(engine, "tokenizer_manager", None), "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "the engine has no tokenizer (skip_tokenizer_init?); set prompt_format to chatml or step-audio"
            )
        if self.config.tools:
            chat = openai_tool_messages(messages)
            tools = [dict(tool) for tool in self.config.tools]
            return str(tokenizer.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=True))
        chat = [{"role": role, "content": text} for role, text in messages]
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        """Stream reply text; closing the iterator aborts the request in the engine."""
        engine = self.start()
        cfg = self.config
        rid = new_request_id(reply_id)
        record = self.stats.begin(rid, reply_id)
        outcome, error = RequestOutcome.FAILED, ""
        generator: Any = None
        try:
            try:
                prompt = self._prompt(engine, messages)
            except ValueError as exc:
                raise LlmServerError(f"SGLang engine: cannot build the prompt: {exc}") from exc
            params = sampling_params(cfg.max_new_tokens, cfg.temperature, cfg.prompt_format, cfg.sampling_params)
            record.attempts = 1
            generator = await engine.async_generate(prompt=prompt, sampling_params=params, stream=True, rid=rid)
            reader = self._read(generator, record)
            try:
                async for text in reader:
                    yield text
            finally:
                await reader.aclose()
            outcome = RequestOutcome.COMPLETED
        except (asyncio.CancelledError, GeneratorExit):
            outcome = RequestOutcome.CANCELLED
            raise
        except LlmServerError as exc:
            error = str(exc)
            raise
        except Exception as exc:  # the engine's own failures (ValueError for a too-long prompt ...)
            error = f"SGLang engine failed the request: {type(exc).__name__}: {exc}"
            raise LlmServerError(error) from exc
        finally:
            if outcome is not RequestOutcome.COMPLETED and record.attempts:
                await self._abort(engine, rid, record)
            if generator is not None and hasattr(generator, "aclose"):
                await generator.aclose()
            self.stats.end(record, outcome, error)
            if error:
                self.log.warning("llm_request_failed", request_id=rid, reply_id=reply_id, error=error)

    async def _read(self, generator: AsyncIterator[Any], record: RequestRecord) -> AsyncGenerator[str, None]:
        parser = SglangChunks(self._incremental(self.engine))
        timeouts = self.config.timeouts
        deadline = record.started_s + timeouts.first_token_s
        finished = False
        while not finished:
            budget = deadline - time.monotonic() if record.first_piece_s is None else timeouts.stall_s
            try:
                async with asyncio.timeout(max(0.0, budget)):
                    out = await anext(generator)
            except StopAsyncIteration:
                break
            except TimeoutError:
                what = "no text" if record.first_piece_s is None else "the stream stalled"
                raise LlmServerTimeout(f"SGLang engine: {what} within {budget:.3g} s") from None
            if not isinstance(out, Mapping):
                raise LlmStreamBroken(f"SGLang engine streamed {type(out).__name__}, not a dict")
            chunk = parser.feed(out)
            absorb_usage(record, chunk)
            if chunk.text:
                if record.first_piece_s is None:
                    record.first_piece_s = time.monotonic()
                record.pieces += 1
                yield chunk.text
            if chunk.finished:
                finished = True
                if chunk.finish_reason == "abort":
                    raise LlmStreamBroken(f"SGLang engine aborted the request itself after {record.pieces} piece(s)")
        if not finished:
            raise LlmStreamBroken(f"SGLang engine ended the stream before the reply finished ({record.pieces} pieces)")

    async def _abort(self, engine: Any, rid: str, record: RequestRecord) -> None:
        """Drop the request in the scheduler (frees its KV cache); never raises."""
        self.stats.count("aborts_sent")
        try:
            result = engine.tokenizer_manager.abort_request(rid)
            if inspect.isawaitable(result):
                await result
            record.aborted = True
        except Exception as exc:
            self.stats.count("aborts_failed")
            self.log.warning("sglang_abort_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}")
