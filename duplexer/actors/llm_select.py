"""Which LLM backend a session uses: one typed config, read from YAML or the command line, and its factory.

Backends:

- ``local``: llama-cpp-python in this process with the bundled SmolLM2 (the CPU default).
- ``openai``: any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, Step-Audio-Chat on vLLM).
- ``sglang-server``: an SGLang server's native ``/generate`` and ``/abort_request``.
- ``sglang``: ``sglang.Engine`` in this process (GPU; sglang is imported only then).

In YAML (``llm:`` section), the backend's options sit under its name::

    backend: openai
    openai: {base_url: "http://gpu-box:8000/v1", model: "Qwen2.5-7B-Instruct", api_key_env: OPENAI_API_KEY,
             timeouts: {first_token_s: 5}, retry: {max_attempts: 2}}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args, get_type_hints

from duplexer.actors.engines import LlmEngine
from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig
from duplexer.actors.llm_sglang import SglangEngineConfig, SglangInProcessLlm
from duplexer.actors.llm_sglang_client import SglangServerConfig, SglangServerLlm
from duplexer.actors.models.llama_llm import LlamaLlm, LlamaParams

LlmBackend = Literal["local", "openai", "sglang-server", "sglang"]
LLM_BACKENDS: tuple[str, ...] = get_args(LlmBackend)


@dataclass(frozen=True)
class LlmBackendConfig:
    backend: LlmBackend = "local"
    local: LlamaParams = field(default_factory=LlamaParams)
    openai: OpenAiLlmConfig = field(default_factory=OpenAiLlmConfig)
    sglang_server: SglangServerConfig = field(default_factory=SglangServerConfig)
    sglang: SglangEngineConfig = field(default_factory=SglangEngineConfig)

    def __post_init__(self) -> None:
        if self.backend not in LLM_BACKENDS:
            raise ValueError(f"llm backend {self.backend!r} is not one of {', '.join(LLM_BACKENDS)}")


_SECTIONS = {"local": "local", "openai": "openai", "sglang-server": "sglang_server", "sglang": "sglang"}


def _build(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    """A config dataclass from a mapping: nested dataclasses recurse, unknown keys are errors."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a mapping of options, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {where} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def llm_config_from_mapping(values: Mapping[str, Any]) -> LlmBackendConfig:
    """The ``llm:`` section of a config file; accepts ``sglang-server`` or ``sglang_server`` as a section name."""
    normalized = {("sglang_server" if key == "sglang-server" else key): value for key, value in values.items()}
    config: LlmBackendConfig = _build(LlmBackendConfig, normalized, "llm")
    return config


def build_llm_engine(config: LlmBackendConfig) -> LlmEngine:
    """The engine for a config; servers are not contacted here (see ``check_health``), an in-process SGLang loads."""
    # The HTTP engines stream call fragments beside text (ToolCallingLlmEngine), which LlmActor takes;
    # Engines.llm is typed for text-only engines.
    if config.backend == "openai":
        return cast(LlmEngine, OpenAiLlm(config.openai))
    if config.backend == "sglang-server":
        return cast(LlmEngine, SglangServerLlm(config.sglang_server))
    if config.backend == "sglang":
        engine = SglangInProcessLlm(config.sglang)
        engine.start()
        return engine
    return LlamaLlm(params=config.local)


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--llm*`` options of a command that runs sessions (demo, talk, serve)."""
    group = parser.add_argument_group("LLM backend")
    group.add_argument(
        "--llm",
        default="local",
        metavar="NAME",
        help=f"LLM backend: {', '.join(LLM_BACKENDS)}, or an installed LLM plug-in's name, which takes none "
        "of the --llm-* options (docs/plugins.md; default: local)",
    )
    group.add_argument(
        "--llm-url",
        "--llm-base-url",
        dest="llm_url",
        help="server base URL (openai: ends in /v1; sglang-server: http://HOST:PORT)",
    )
    group.add_argument("--llm-model", help="openai: model name; sglang: model path")
    group.add_argument("--llm-api-key-env", help="environment variable holding the server's API key")
    group.add_argument("--llm-prompt-format", help="openai: chat|step-audio; sglang*: chatml|step-audio (|model)")
    group.add_argument(
        "--llm-abort-url", help="openai: the server's abort endpoint (SGLang: http://HOST:PORT/abort_request)"
    )
    group.add_argument("--llm-max-tokens", type=int, help="longest reply, in tokens")
    group.add_argument("--llm-first-token-timeout-s", type=float, help="fail a reply (fallback) with no text by then")
    group.add_argument(
        "--llm-engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sglang: an sglang.Engine argument (VALUE parsed as JSON when it can be), repeatable",
    )


def llm_config_from_args(args: argparse.Namespace, base: LlmBackendConfig | None = None) -> LlmBackendConfig:
    """Apply the ``--llm*`` options over ``base`` (for example, a config file's ``llm:`` section)."""
    config = base or LlmBackendConfig()
    backend: LlmBackend = args.llm or config.backend
    section = _SECTIONS[backend]
    current = getattr(config, section)
    changes: dict[str, Any] = {}
    url, model = getattr(args, "llm_url", None), getattr(args, "llm_model", None)
    prompt_format = getattr(args, "llm_prompt_format", None)
    max_tokens, first_token_s = getattr(args, "llm_max_tokens", None), getattr(args, "llm_first_token_timeout_s", None)
    if backend == "local":
        _refuse(args, ("llm_url", "llm_model", "llm_api_key_env", "llm_prompt_format", "llm_abort_url"), backend)
        if max_tokens is not None:
            changes["max_tokens"] = max_tokens
    elif backend == "openai":
        changes.update(_present(base_url=url, model=model, prompt_format=prompt_format, max_tokens=max_tokens))
        changes.update(_present(api_key_env=args.llm_api_key_env, abort_url=args.llm_abort_url))
    elif backend == "sglang-server":
        _refuse(args, ("llm_model", "llm_abort_url"), backend)
        changes.update(_present(base_url=url, prompt_format=prompt_format, max_new_tokens=max_tokens))
        changes.update(_present(api_key_env=args.llm_api_key_env))
    else:
        _refuse(args, ("llm_url", "llm_api_key_env", "llm_abort_url"), backend)
        changes.update(_present(model_path=model, prompt_format=prompt_format, max_new_tokens=max_tokens))
        if args.llm_engine_arg:
            changes["engine_args"] = {**current.engine_args, **parse_engine_args(args.llm_engine_arg)}
    if first_token_s is not None:
        if backend == "local":
            raise ValueError("--llm-first-token-timeout-s applies to server and sglang backends, not local")
        changes["timeouts"] = dataclasses.replace(current.timeouts, first_token_s=first_token_s)
    if args.llm_engine_arg and backend != "sglang":
        raise ValueError("--llm-engine-arg applies to the sglang backend only")
    return dataclasses.replace(config, backend=backend, **{section: dataclasses.replace(current, **changes)})


def parse_engine_args(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (numbers, true, lists) is taken as that."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--llm-engine-arg {item!r} is not KEY=VALUE (for example tp_size=2)")
        try:
            parsed[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key.replace("-", "_")] = raw
    return parsed


def _present(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _refuse(args: argparse.Namespace, names: Sequence[str], backend: str) -> None:
    for name in names:
        if getattr(args, name, None):
            raise ValueError(f"--{name.replace('_', '-')} does not apply to the {backend} LLM backend")
