"""Wires one session's actors around its engines: the local executor's pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

from duplexer.actors.asr import AsrActor, AsrParams
from duplexer.actors.context import DEFAULT_SYSTEM_PROMPT, ContextActor, ContextManager
from duplexer.actors.controller import ControllerActor
from duplexer.actors.engines import Engines
from duplexer.actors.llm import LlmActor, LlmParams
from duplexer.actors.playout import PlayoutActor, PlayoutParams
from duplexer.actors.tokenizer import TokenizerActor, TokenizerParams
from duplexer.actors.tokenizer_engines import TokenizerEngine
from duplexer.actors.tool_registry import ToolRegistry
from duplexer.actors.tools import ToolActor, ToolParams
from duplexer.actors.tts import TtsActor, TtsParams
from duplexer.actors.vad import VadActor, VadParams
from duplexer.policies.controller import PolicyParams
from duplexer.runtime.actor import Actor
from duplexer.runtime.session import Session


@dataclass(frozen=True)
class PipelineConfig:
    """Every actor's parameters, with defaults in one place."""

    policy: PolicyParams = field(default_factory=PolicyParams)
    vad: VadParams = field(default_factory=VadParams)
    asr: AsrParams = field(default_factory=AsrParams)
    llm: LlmParams = field(default_factory=LlmParams)
    tts: TtsParams = field(default_factory=TtsParams)
    playout: PlayoutParams = field(default_factory=PlayoutParams)
    tools: ToolParams = field(default_factory=ToolParams)
    tokenizer: TokenizerParams = field(default_factory=TokenizerParams)


def start_pipeline(
    session: Session,
    engines: Engines,
    config: PipelineConfig | None = None,
    context: ContextManager | None = None,
    tools: ToolRegistry | None = None,
    tokenizer: TokenizerEngine | None = None,
) -> dict[str, Actor]:
    """Start VAD, ASR, controller, context, LLM, TTS and playout actors on the session's bus.

    With ``tools``, a tool actor runs them too, and the default system prompt teaches the model
    the tools (a ``context`` passed in keeps its own system prompt). With ``tokenizer``, user audio
    also becomes interleaved Step-Audio token events, for an audio LLM.
    """
    cfg = config or PipelineConfig()
    ctx = session.ctx
    if tools is not None and context is None:
        context = ContextManager(system_prompt=DEFAULT_SYSTEM_PROMPT + "\n\n" + tools.prompt())
    actors: list[Actor] = [
        ControllerActor(ctx, cfg.policy),
        ContextActor(ctx, context),
        VadActor(ctx, engines.vad, cfg.vad),
        AsrActor(ctx, engines.asr, cfg.asr),
        LlmActor(ctx, engines.llm, cfg.llm, tools=tools is not None),
        TtsActor(ctx, engines.tts, cfg.tts),
        PlayoutActor(ctx, engines.sink, cfg.playout),
    ]
    if tools is not None:
        actors.append(ToolActor(ctx, tools, cfg.tools))
    if tokenizer is not None:
        actors.append(TokenizerActor(ctx, tokenizer, cfg.tokenizer))
    session.add(*actors)
    return {actor.name: actor for actor in actors}
