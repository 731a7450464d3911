"""Wires one session's actors around its engines: the local executor's pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from duplexer.actors.turn_detector import TurnDetectorActor, TurnDetectorParams
from duplexer.actors.vad import VadActor, VadParams
from duplexer.policies.controller import PolicyParams
from duplexer.runtime.actor import Actor, ActorSpec, EngineRef
from duplexer.runtime.placement import ActorCatalog, Placement


@dataclass(frozen=True)
class PipelineConfig:
    """Every actor's parameters, with defaults in one place."""

    policy: PolicyParams = field(default_factory=PolicyParams)
    strict_policy: bool = False
    """A rule that breaks the controller table's promises raises (the simulator) instead of resetting."""
    vad: VadParams = field(default_factory=VadParams)
    asr: AsrParams = field(default_factory=AsrParams)
    llm: LlmParams = field(default_factory=LlmParams)
    tts: TtsParams = field(default_factory=TtsParams)
    playout: PlayoutParams = field(default_factory=PlayoutParams)
    tools: ToolParams = field(default_factory=ToolParams)
    tool_registry: ToolRegistry | None = None
    """The tools a session may call (``--tools FILE`` or a persona's): used when none is passed in."""
    tokenizer: TokenizerParams = field(default_factory=TokenizerParams)
    turn_detector: TurnDetectorParams = field(default_factory=TurnDetectorParams)


def pipeline_specs(
    config: PipelineConfig | None = None,
    context: ContextManager | None = None,
    tools: ToolRegistry | None = None,
    tokenizer: TokenizerEngine | None = None,
    turn_detector: bool = False,
) -> list[ActorSpec]:
    """The pipeline's actors as specs, with engines named (:class:`EngineRef`) rather than given.

    With ``tools``, a tool actor runs them too, and the default system prompt teaches the model
    the tools (a ``context`` passed in keeps its own system prompt). With ``tokenizer``, user audio
    also becomes interleaved Step-Audio token events, for an audio LLM. With ``turn_detector``, a
    turn-detector actor (on the ``turn_detector`` engine) tunes the end-of-turn wait.
    """
    cfg = config or PipelineConfig()
    tools = tools if tools is not None else cfg.tool_registry
    if tools is not None and context is None:
        # Past rounds stay in the prompt: a follow-up ("and tomorrow?") needs the earlier results.
        context = ContextManager(system_prompt=DEFAULT_SYSTEM_PROMPT + "\n\n" + tools.prompt(), recent_replies=None)
    specs = [
        ActorSpec.of(ControllerActor, cfg.policy, strict=cfg.strict_policy),
        ActorSpec.of(ContextActor, context),
        ActorSpec.of(VadActor, EngineRef("vad"), cfg.vad),
        ActorSpec.of(AsrActor, EngineRef("asr"), cfg.asr),
        ActorSpec.of(LlmActor, EngineRef("llm"), cfg.llm, tools=tools is not None),
        ActorSpec.of(TtsActor, EngineRef("tts"), cfg.tts),
        ActorSpec.of(PlayoutActor, EngineRef("sink"), cfg.playout),
    ]
    if tools is not None:
        specs.append(ActorSpec.of(ToolActor, tools, cfg.tools))
    if tokenizer is not None:
        specs.append(ActorSpec.of(TokenizerActor, tokenizer, cfg.tokenizer))
    if turn_detector:
        specs.append(ActorSpec.of(TurnDetectorActor, EngineRef("turn_detector"), cfg.turn_detector))
    return specs


_ALWAYS = (VadActor, AsrActor, ControllerActor, ContextActor, LlmActor, TtsActor, PlayoutActor)
_WHEN_CONFIGURED = (ToolActor, TokenizerActor, TurnDetectorActor)
"""Actors a session runs only when configured: tools, an audio tokenizer, a turn detector."""
_SESSION = (ControllerActor, ContextActor, LlmActor, TtsActor)
"""What leaves the driver by default: the actors that do not read every audio frame."""


def _on_one_host(*actors: type[Actor]) -> Placement:
    return Placement((("session", tuple(actor.name for actor in actors)),))


PIPELINE_ACTORS = ActorCatalog(
    actors=frozenset(actor.name for actor in (*_ALWAYS, *_WHEN_CONFIGURED)),
    driver_only=frozenset({PlayoutActor.name}),  # it writes to the call's audio sink
    placements=(
        ("session", _on_one_host(*_SESSION)),
        ("audio-remote", _on_one_host(VadActor, AsrActor, TokenizerActor, *_SESSION)),
        (
            "split",
            Placement(
                tuple(
                    (actor.name, (actor.name,))
                    for actor in (VadActor, AsrActor, ControllerActor, ContextActor, LlmActor, TtsActor, ToolActor)
                )
            ),
        ),
    ),
    preload=(__name__,),
)
"""The pipeline's actors for the Ray executor. Named placements: ``session`` keeps audio in the driver;
``audio-remote`` moves the audio readers to the session host; ``split`` gives every subsystem a Ray
actor of its own. A pooled host preloads this module, and with it every actor module."""


class PlacesActors(Protocol):
    """An executor's session: builds specs where it runs them (locally, or on Ray hosts)."""

    def place(self, specs: Iterable[ActorSpec], engines: Any = None) -> dict[str, Actor]: ...


def start_pipeline(
    session: PlacesActors,
    engines: Engines,
    config: PipelineConfig | None = None,
    context: ContextManager | None = None,
    tools: ToolRegistry | None = None,
    tokenizer: TokenizerEngine | None = None,
) -> dict[str, Actor]:
    """Start VAD, ASR, controller, context, LLM, TTS and playout actors on the session's bus.

    See :func:`pipeline_specs`; the turn detector joins when ``engines`` has one. Returns the actors
    running in this process, by name.
    """
    detector = getattr(engines, "turn_detector", None) is not None
    return session.place(pipeline_specs(config, context, tools, tokenizer, detector), engines)
