"""The ``openai`` LLM backend: any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server), streamed.

A reply is one streaming ``POST {base_url}/chat/completions``. Cancelling the reply closes
the connection; vLLM, SGLang and llama.cpp's servers stop generating when their client goes
away. Where the server also has an abort endpoint (SGLang: ``abort_url`` set to
``http://HOST:PORT/abort_request``), the request carries its id (``rid``) and a cancel posts
``{"rid": ...}`` there too, so the GPU work stops even behind a proxy that keeps the upstream
connection open.

Prefix reuse: the request body lists the messages in order (system, history, then the user
text) and serializes them the same way every time, so the speculative calls of one turn send
byte-identical bodies up to the last user message. The messages come last in the body, the
request id after them, so even the raw bytes share that prefix.

With ``prompt_format="step-audio"`` (Step-Audio-Chat served by vLLM), the conversation is
rendered with Step-Audio's own framing (:mod:`duplexer.actors.llm_prompt`) and sent to
``{base_url}/completions`` as a raw prompt, stopping at ``<|EOT|>``; the server's chat
template is not used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from duplexer.actors.engines import Message
from duplexer.actors.llm_http_client import (
    ChunkParser,
    HttpRequestSpec,
    LlmServerUnavailable,
    RetryPolicy,
    StreamChunk,
    StreamingHttpLlm,
    Timeouts,
    bearer_headers,
    json_body,
    resolve_api_key,
)
from duplexer.actors.llm_prompt import STOP_STRINGS, render_prompt
from duplexer.actors.tool_calls import CALL_CLOSE, CALL_OPEN, ToolCallChunk, parse_call_body

OpenAiPromptFormat = Literal["chat", "step-audio"]


@dataclass(frozen=True)
class OpenAiLlmConfig:
    """Where the server is and how to ask it; defaults in one place."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Up to and including ``/v1``."""
    model: str = ""
    """The served model's name; empty leaves it out (servers with one model use it)."""
    api_key: str = ""
    api_key_env: str = ""
    """Name of an environment variable that holds the API key (keeps keys out of config files)."""
    max_tokens: int = 80
    temperature: float = 0.3
    prompt_format: OpenAiPromptFormat = "chat"
    abort_url: str = ""
    """An abort endpoint taking ``{request_id_field: id}`` (SGLang: ``http://HOST:PORT/abort_request``)."""
    request_id_field: str = "rid"
    include_usage: bool = False
    """Ask for token usage in the last chunk (``stream_options.include_usage``); not every server takes it."""
    tools: tuple[Mapping[str, Any], ...] = ()
    """OpenAI ``tools`` entries sent with every chat request (a session's registry: ``openai_tools()``);
    the server streams the model's calls back as ``delta.tool_calls``."""
    tool_choice: str = "auto"
    """``auto``, ``required``, ``none`` or one tool's name (forces that call, with a grammar on llama.cpp's
    server, the only way it streams calls). Asked on a reply's first pass; after a tool result the server
    chooses (its default), so the reply can go on in words."""
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    """More request fields, sent as they are (``top_p``, ``min_tokens``, ``chat_template_kwargs`` ...)."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"openai base_url {self.base_url!r} must start with http:// or https://")
        if self.prompt_format not in ("chat", "step-audio"):
            raise ValueError(f"openai prompt_format {self.prompt_format!r} must be chat or step-audio")
        if self.max_tokens < 1:
            raise ValueError(f"openai max_tokens must be >= 1, got {self.max_tokens}")
        if self.abort_url and not self.abort_url.startswith(("http://", "https://")):
            raise ValueError(f"openai abort_url {self.abort_url!r} must start with http:// or https://")


def openai_tool_choice(choice: str) -> Any:
    """The request's ``tool_choice``: a mode as it is, a tool's name as the object that forces it."""
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def openai_tool_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Chat messages in OpenAI's tool-calling shape.

    The history carries a call as text (``<tool_call>function\nNAME\n{JSON}</tool_call>`` inside an
    assistant message, whatever format the model used) and each result as a ``tool`` message after it.
    Here an assistant message's calls become its ``tool_calls`` and each following ``tool`` message
    gets the matching ``tool_call_id``. Ids are numbered through the conversation, so the same history
    always gives the same bytes (prefix reuse across speculative requests).
    """
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    n_calls = 0
    for role, text in messages:
        if role == "tool":
            message: dict[str, Any] = {"role": "tool", "content": text}
            if pending:
                message["tool_call_id"] = pending.pop(0)
            out.append(message)
            continue
        if role != "assistant" or CALL_OPEN not in text:
            out.append({"role": role, "content": text})
            continue
        spoken, calls, rest = [], [], text
        while True:
            before, _, after = rest.partition(CALL_OPEN)
            body, closed, tail = after.partition(CALL_CLOSE)
            if not closed:  # no call, or one left open: the rest is spoken as it is
                break
            spoken.append(before)
            rest = tail
            parsed = parse_call_body(body)
            n_calls += 1
            call_id = f"call_{n_calls}"
            pending.append(call_id)
            function = {"name": parsed.name, "arguments": parsed.arguments or "{}"}
            calls.append({"id": call_id, "type": "function", "function": function})
        spoken.append(rest)
        out.append({"role": "assistant", "content": "".join(spoken).strip(), "tool_calls": calls})
    return out


class _OpenAiChunks(ChunkParser):
    def __init__(self, chat: bool) -> None:
        self.chat = chat

    def feed(self, payload: Mapping[str, Any]) -> StreamChunk:
        chunk = StreamChunk()
        choices = payload.get("choices") or []
        if choices:
            choice = choices[0]
            if self.chat:
                delta = choice.get("delta") or {}
                chunk.text = delta.get("content") or ""
                calls = delta.get("tool_calls") or []
                if isinstance(calls, list):
                    chunk.tool_calls = tuple(ToolCallChunk.from_openai(c) for c in calls if isinstance(c, Mapping))
            else:
                chunk.text = choice.get("text") or ""
            reason = choice.get("finish_reason")
            if reason:
                chunk.finished, chunk.finish_reason = True, str(reason)
        usage = payload.get("usage")
        if isinstance(usage, Mapping):
            chunk.completion_tokens = usage.get("completion_tokens")
            chunk.prompt_tokens = usage.get("prompt_tokens")
            details = usage.get("prompt_tokens_details")
            if isinstance(details, Mapping) and details.get("cached_tokens") is not None:
                chunk.cached_tokens = details.get("cached_tokens")
        return chunk


class OpenAiLlm(StreamingHttpLlm):
    """Streams replies from an OpenAI-compatible server; see the module docstring for cancel and prefix reuse."""

    def __init__(self, config: OpenAiLlmConfig | None = None) -> None:
        self.config = config or OpenAiLlmConfig()
        base = self.config.base_url.rstrip("/")
        super().__init__(
            server_name=f"OpenAI-compatible server {base}",
            timeouts=self.config.timeouts,
            retry=self.config.retry,
            headers=bearer_headers(resolve_api_key(self.config.api_key, self.config.api_key_env, "openai")),
        )
        self.base_url = base
        self.chat = self.config.prompt_format == "chat"

    async def build_request(self, messages: Sequence[Message], request_id: str) -> HttpRequestSpec:
        cfg = self.config
        fields: list[tuple[str, Any]] = []
        if cfg.model:
            fields.append(("model", cfg.model))
        fields += [("stream", True), ("max_tokens", cfg.max_tokens), ("temperature", cfg.temperature)]
        if cfg.include_usage:
            fields.append(("stream_options", {"include_usage": True}))
        fields += list(cfg.extra_body.items())
        if self.chat:
            url = f"{self.base_url}/chat/completions"
            if cfg.tools:
                fields.append(("tools", [dict(tool) for tool in cfg.tools]))
                if not messages or messages[-1][0] != "tool":  # a continuation leaves the choice to the server
                    fields.append(("tool_choice", openai_tool_choice(cfg.tool_choice)))
                fields.append(("messages", openai_tool_messages(messages)))
            else:
                fields.append(("messages", [{"role": role, "content": text} for role, text in messages]))
        else:
            url = f"{self.base_url}/completions"
            fields.append(("stop", list(STOP_STRINGS["step-audio"])))
            fields.append(("prompt", render_prompt("step-audio", messages)))
        if cfg.abort_url:
            fields.append((cfg.request_id_field, request_id))
            abort_body = json_body([(cfg.request_id_field, request_id)])
            return HttpRequestSpec(url, json_body(fields), cfg.abort_url, abort_body)
        return HttpRequestSpec(url, json_body(fields))

    def chunk_parser(self) -> ChunkParser:
        return _OpenAiChunks(self.chat)

    async def models(self) -> list[str]:
        """The model names the server lists (``GET /models``)."""
        listing = await self.get_json(f"{self.base_url}/models", "listing models")
        data = listing.get("data") if isinstance(listing, Mapping) else None
        if not isinstance(data, list):
            raise LlmServerUnavailable(f"{self.server_name}: GET /models did not return an OpenAI model list")
        return [str(item.get("id")) for item in data if isinstance(item, Mapping)]

    async def check_health(self) -> None:
        """The server answers ``/models`` and, when a model is configured, lists it."""
        names = await self.models()
        if self.config.model and self.config.model not in names:
            raise LlmServerUnavailable(
                f"{self.server_name} does not serve model {self.config.model!r}; it lists {', '.join(names) or 'none'}"
            )
