"""The ``sglang-server`` LLM backend: an SGLang server's native API (``python -m sglang.launch_server``).

- A reply is one ``POST /generate`` with ``{"sampling_params", "stream": true, "text", "rid"}``;
  the server answers server-sent events, ``data: {"text", "meta_info": {...}}`` per step and
  ``data: [DONE]`` at the end. ``meta_info`` carries ``id``, ``finish_reason`` (null until the
  end, then ``{"type": "stop" | "length" | "abort", ...}``), ``prompt_tokens``,
  ``completion_tokens`` and ``cached_tokens`` (prompt tokens served from the radix cache).
- A cancel closes the stream and posts ``{"rid": ...}`` to ``POST /abort_request``, so the
  scheduler frees the request's KV cache at once.
- ``GET /health`` answers 200 when the server is up; ``GET /get_server_info`` gives its
  arguments.

Streamed ``text`` is cumulative (the whole reply so far) unless the server was started with
``--incremental-streaming-output``, in which case each event carries only the new text. With
``text_mode="auto"`` the engine reads that flag from ``/get_server_info`` once (a server that
does not say is taken as cumulative, SGLang's default); ``cumulative`` or ``incremental`` set
it outright.

The prompt is rendered here (``/generate`` takes raw text, no chat template): ``chatml`` or
``step-audio``, both prefix-stable (:mod:`duplexer.actors.llm_prompt`), so speculative calls
of one turn hit the radix cache for the whole history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from duplexer.actors.engines import Message
from duplexer.actors.llm_http_client import (
    ChunkParser,
    HttpRequestSpec,
    LlmServerError,
    LlmServerUnavailable,
    RetryPolicy,
    StreamChunk,
    StreamingHttpLlm,
    Timeouts,
    bearer_headers,
    json_body,
    resolve_api_key,
)
from duplexer.actors.llm_prompt import STOP_STRINGS, PromptFormat, check_format, render_prompt
from duplexer.runtime.logging import get_logger

TextMode = Literal["auto", "cumulative", "incremental"]
TEXT_MODES = ("auto", "cumulative", "incremental")


@dataclass(frozen=True)
class SglangServerConfig:
    base_url: str = "http://127.0.0.1:30000"
    prompt_format: PromptFormat = "chatml"
    max_new_tokens: int = 80
    temperature: float = 0.3
    text_mode: TextMode = "auto"
    api_key: str = ""
    """The server's ``--api-key``, if it was started with one."""
    api_key_env: str = ""
    """Name of an environment variable that holds that key."""
    sampling_params: Mapping[str, Any] = field(default_factory=dict)
    """More sampling parameters (``top_p``, ``repetition_penalty`` ...), sent as they are."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"sglang-server base_url {self.base_url!r} must start with http:// or https://")
        check_format(self.prompt_format)
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"sglang text_mode {self.text_mode!r} is not one of {', '.join(TEXT_MODES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sglang max_new_tokens must be >= 1, got {self.max_new_tokens}")


def sampling_params(
    max_new_tokens: int, temperature: float, prompt_format: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """SGLang sampling parameters: length, temperature, the format's end-of-turn stop, then ``extra``.

    A model's own chat template (``prompt_format="model"``) ends turns with its EOS token, which
    SGLang stops on by itself, so it gets no stop string.
    """
    params: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    stops = STOP_STRINGS.get(prompt_format, ())
    if stops:
        params["stop"] = list(stops)
    return {**params, **extra}


class SglangChunks(ChunkParser):
    """SGLang's streamed outputs (``{"text", "meta_info"}``), cumulative or incremental text."""

    def __init__(self, incremental: bool) -> None:
        self.incremental = incremental
        self.seen = ""
        self.log = get_logger(component="llm_sglang")

    def feed(self, payload: Mapping[str, Any]) -> StreamChunk:
        text = payload.get("text") or ""
        if not isinstance(text, str):
            raise LlmServerError(f"SGLang sent non-text output {type(text).__name__}; is this a generation model?")
        if self.incremental:
            delta = text
        elif text.startswith(self.seen):
            delta = text[len(self.seen) :]
        else:  # should not happen with cumulative text; never repeat what was already spoken
            self.log.warning("sglang_text_not_cumulative", seen_chars=len(self.seen), got_chars=len(text))
            delta = text[len(self.seen) :] if len(text) > len(self.seen) else ""
        self.seen = self.seen + delta if self.incremental else text
        chunk = StreamChunk(text=delta)
        meta = payload.get("meta_info")
        if isinstance(meta, Mapping):
            reason = meta.get("finish_reason")
            if reason:
                chunk.finished = True
                chunk.finish_reason = str(reason.get("type", "")) if isinstance(reason, Mapping) else str(reason)
            chunk.completion_tokens = _int_or_none(meta.get("completion_tokens"))
            chunk.prompt_tokens = _int_or_none(meta.get("prompt_tokens"))
            chunk.cached_tokens = _int_or_none(meta.get("cached_tokens"))
        return chunk


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


class SglangServerLlm(StreamingHttpLlm):
    """Streams replies from an SGLang server's ``/generate``; a cancel posts ``/abort_request``."""

    def __init__(self, config: SglangServerConfig | None = None) -> None:
        self.config = config or SglangServerConfig()
        base = self.config.base_url.rstrip("/")
        super().__init__(
            server_name=f"SGLang server {base}",
            timeouts=self.config.timeouts,
            retry=self.config.retry,
            headers=bearer_headers(resolve_api_key(self.config.api_key, self.config.api_key_env, "sglang-server")),
        )
        self.base_url = base
        self.incremental: bool | None = {"cumulative": False, "incremental": True}.get(self.config.text_mode)

    async def server_info(self) -> Mapping[str, Any]:
        info = await self.get_json(f"{self.base_url}/get_server_info", "reading /get_server_info")
        return info if isinstance(info, Mapping) else {}

    async def _text_is_incremental(self) -> bool:
        if self.incremental is None:
            try:
                info = await self.server_info()
            except LlmServerUnavailable as exc:
                self.log.info("sglang_server_info_unavailable", error=str(exc))
                return False  # not cached: ask again on the next request
            self.incremental = bool(info.get("incremental_streaming_output", False))
        return self.incremental

    async def build_request(self, messages: Sequence[Message], request_id: str) -> HttpRequestSpec:
        cfg = self.config
        await self._text_is_incremental()
        params = sampling_params(cfg.max_new_tokens, cfg.temperature, cfg.prompt_format, cfg.sampling_params)
        body = json_body(
            [
                ("sampling_params", params),
                ("stream", True),
                ("text", render_prompt(cfg.prompt_format, messages)),
                ("rid", request_id),
            ]
        )
        return HttpRequestSpec(
            f"{self.base_url}/generate", body, f"{self.base_url}/abort_request", json_body([("rid", request_id)])
        )

    def chunk_parser(self) -> ChunkParser:
        return SglangChunks(bool(self.incremental))  # unknown (server info unreachable): cumulative

    async def check_health(self, generate: bool = False) -> None:
        """``GET /health`` answers 200; with ``generate``, ``GET /health_generate`` (the server generates a token)."""
        path = "/health_generate" if generate else "/health"
        await self.get_json(f"{self.base_url}{path}", f"health check ({path})")
