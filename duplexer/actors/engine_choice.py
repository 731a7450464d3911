"""``--vad/--asr/--tts/--turn-detector NAME`` (and ``--llm NAME`` for a plug-in LLM): a session's
engines chosen by name, over the engines a command builds by default.

Every name resolves through :mod:`duplexer.actors.plugins` (a built-in or an installed plug-in)
when the command starts, so a bad name, a plug-in that fails to import or one of the wrong type
stops it at once with one line; the chosen engines are then built for each session on its clock.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.plugins import ENGINE_KINDS, EngineKind, EnginePlugin, built_in_engine_names, engine_plugin
from duplexer.runtime.clock import Clock

EngineFactory = Callable[[Clock, AudioSink], Engines]

SELECTABLE: tuple[EngineKind, ...] = ("vad", "asr", "tts", "turn_detector")
"""The kinds every pipeline command chooses by name; the LLM has its own ``--llm`` options
(:mod:`duplexer.actors.llm_select`), whose ``--llm NAME`` also takes a plug-in's name."""

ChosenEngines = dict[EngineKind, tuple[str, EnginePlugin]]
"""kind -> (the name given, its plug-in), for the kinds named on the command line."""


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--vad/--asr/--tts/--turn-detector NAME`` options of a command that builds a pipeline."""
    group = parser.add_argument_group(
        "engines by name", "a built-in engine or an installed plug-in's (docs/plugins.md); default: the command's own"
    )
    for kind in SELECTABLE:
        group.add_argument(
            "--" + kind.replace("_", "-"),
            dest=f"engine_{kind}",
            metavar="NAME",
            default=None,
            help=f"the {kind.replace('_', ' ')} engine: {', '.join(built_in_engine_names(kind))} or a plug-in's name",
        )


def chosen_engines(args: argparse.Namespace, llm_backends: tuple[str, ...] = ()) -> ChosenEngines:
    """Resolve the names given on the command line (a :class:`~duplexer.actors.plugins.PluginError`
    for the first bad one). ``--llm NAME`` counts when NAME is not one of ``llm_backends``, the
    backends :mod:`duplexer.actors.llm_select` configures itself."""
    chosen: ChosenEngines = {}
    for kind in ENGINE_KINDS:
        name = getattr(args, f"engine_{kind}", None)
        if kind == "llm":
            name = getattr(args, "llm", None)
            if name is None or name in llm_backends:
                continue
        if name is not None:
            chosen[kind] = (name, engine_plugin(kind, name))
    return chosen


def with_engines(factory: EngineFactory, chosen: ChosenEngines) -> EngineFactory:
    """``factory`` with the chosen kinds replaced by their named engines, built per session."""
    if not chosen:
        return factory
    choices = dict(chosen)

    def build(clock: Clock, sink: AudioSink) -> Engines:
        engines = factory(clock, sink)
        for kind, (name, plugin) in choices.items():
            setattr(engines, kind, plugin.make(clock, name))
        return engines

    return build


def engine_summary(chosen: ChosenEngines) -> str:
    """``tts=example-tone, vad=energy``: what a command says it runs."""
    return ", ".join(f"{kind}={name}" for kind, (name, _) in chosen.items())
