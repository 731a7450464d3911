"""Choosing an LLM backend from a config file section or command-line options."""

from __future__ import annotations

import argparse

import pytest

from duplexer.actors.llm_openai import OpenAiLlm
from duplexer.actors.llm_select import (
    LlmBackendConfig,
    add_llm_arguments,
    build_llm_engine,
    llm_config_from_args,
    llm_config_from_mapping,
)
from duplexer.actors.llm_sglang_client import SglangServerLlm


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_config_section_selects_the_backend_and_sets_its_nested_options() -> None:
    config = llm_config_from_mapping(
        {
            "backend": "openai",
            "openai": {
                "base_url": "http://gpu:8000/v1",
                "model": "Qwen2.5-7B-Instruct",
                "timeouts": {"first_token_s": 4},
                "retry": {"max_attempts": 2},
                "extra_body": {"top_p": 0.9},
            },
            "sglang-server": {"base_url": "http://gpu:30000", "text_mode": "incremental"},
        }
    )
    assert config.backend == "openai"
    assert config.openai.base_url == "http://gpu:8000/v1" and config.openai.model == "Qwen2.5-7B-Instruct"
    assert config.openai.timeouts.first_token_s == 4 and config.openai.timeouts.stall_s == 10.0
    assert config.openai.retry.max_attempts == 2 and dict(config.openai.extra_body) == {"top_p": 0.9}
    assert config.sglang_server.text_mode == "incremental"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"backend": "vllm"}, "llm backend 'vllm' is not one of local, openai, sglang-server, sglang"),
        ({"openai": {"baseurl": "x"}}, "unknown llm.openai option.s. baseurl; known: abort_url, api_key"),
        ({"openai": {"timeouts": {"first_token": 3}}}, r"unknown llm.openai.timeouts option.s. first_token"),
        ({"openai": {"base_url": "gpu:8000"}}, "must start with http:// or https://"),
        ({"sglang_server": {"text_mode": "delta"}}, "text_mode 'delta' is not one of auto, cumulative"),
        ({"openai": {"retry": {"max_attempts": 0}}}, "max_attempts must be >= 1"),
    ],
)
def test_bad_config_names_the_option_and_the_fix(section: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        llm_config_from_mapping(section)


def test_command_line_options_configure_the_chosen_backend() -> None:
    config = llm_config_from_args(
        parse("--llm", "openai", "--llm-url", "http://gpu:8000/v1", "--llm-model", "m", "--llm-max-tokens", "40")
    )
    assert (config.backend, config.openai.base_url, config.openai.model, config.openai.max_tokens) == (
        "openai",
        "http://gpu:8000/v1",
        "m",
        40,
    )
    sglang = llm_config_from_args(
        parse("--llm", "sglang", "--llm-model", "/models/step", "--llm-engine-arg", "tp_size=4",
              "--llm-engine-arg", "mem-fraction-static=0.8", "--llm-engine-arg", "attention_backend=fa3")
    )  # fmt: skip
    assert sglang.sglang.model_path == "/models/step"
    assert dict(sglang.sglang.engine_args) == {"tp_size": 4, "mem_fraction_static": 0.8, "attention_backend": "fa3"}
    timed = llm_config_from_args(parse("--llm", "sglang-server", "--llm-first-token-timeout-s", "2.5"))
    assert timed.sglang_server.timeouts.first_token_s == 2.5


def test_command_line_options_that_do_not_apply_are_refused() -> None:
    with pytest.raises(ValueError, match="--llm-url does not apply to the local LLM backend"):
        llm_config_from_args(parse("--llm-url", "http://x/v1"))
    with pytest.raises(ValueError, match="--llm-engine-arg applies to the sglang backend only"):
        llm_config_from_args(parse("--llm", "openai", "--llm-engine-arg", "tp_size=2"))
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        llm_config_from_args(parse("--llm", "sglang", "--llm-engine-arg", "tp_size"))


def test_an_api_key_comes_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUPLEXER_TEST_KEY", "sk-test")
    engine = build_llm_engine(llm_config_from_args(parse("--llm", "openai", "--llm-api-key-env", "DUPLEXER_TEST_KEY")))
    assert isinstance(engine, OpenAiLlm) and engine.headers == {"Authorization": "Bearer sk-test"}
    monkeypatch.delenv("DUPLEXER_TEST_KEY")
    with pytest.raises(ValueError, match="DUPLEXER_TEST_KEY, which is not set"):
        build_llm_engine(llm_config_from_args(parse("--llm", "openai", "--llm-api-key-env", "DUPLEXER_TEST_KEY")))


def test_server_backends_are_built_without_contacting_the_server() -> None:
    assert isinstance(build_llm_engine(LlmBackendConfig(backend="sglang-server")), SglangServerLlm)
    assert isinstance(build_llm_engine(LlmBackendConfig(backend="openai")), OpenAiLlm)
