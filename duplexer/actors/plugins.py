"""Engines and policies by name: the built-in ones and installed plug-ins, through one path.

A name resolves to an object given as ``module:attribute``: the built-ins from the tables below,
plug-ins from the entry-point groups :data:`ENGINE_GROUP` and :data:`POLICY_GROUP` of installed
packages. Both are imported, type-checked and (for policies) checked against the controller's
promises by the same code, so a plug-in is a first-class engine or policy. Every failure is a
:class:`PluginError` whose one-line message names the input and, for an unknown name, lists the
known ones. Writing a plug-in: docs/plugins.md.

- An engine plug-in's entry point is named ``KIND.NAME`` (``tts.example-tone``) and names an
  :class:`EnginePlugin`; ``--tts example-tone`` selects it.
- A policy plug-in's entry point is named ``NAME`` and names a :class:`PolicyParams` instance
  whose class carries its transition table (:attr:`PolicyParams.table`); ``--policy NAME`` selects it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, get_args

from duplexer.policies.params import POLICY_PRESETS, PRESET_ALIASES, PolicyParams, preset
from duplexer.policies.table import PolicyTable, PolicyTableError, check_table
from duplexer.runtime.clock import Clock

ENGINE_GROUP = "duplexer.engines"
POLICY_GROUP = "duplexer.policies"

EngineKind = Literal["vad", "asr", "llm", "tts", "turn_detector"]
ENGINE_KINDS: tuple[EngineKind, ...] = get_args(EngineKind)

ENGINE_METHODS: dict[str, tuple[str, ...]] = {
    "vad": ("speech_probability",),
    "asr": ("transcribe",),
    "llm": ("stream",),
    "tts": ("synthesize", "sample_rate_hz", "renderable_instructions"),
    "turn_detector": ("end_of_turn_probability",),
}
"""What an engine of each kind must have (:mod:`duplexer.actors.engines`), checked when it is built."""


class PluginError(ValueError):
    """A name that resolves to nothing usable; the message is one line naming it."""


@dataclass(frozen=True)
class EnginePlugin:
    """What an entry point of ``duplexer.engines`` names: an engine kind and how to build one.

    ``build(clock)`` returns one session's engine, on the session's clock (a simulated session's
    clock is virtual: time an engine with ``clock.sleep_ms``, never ``asyncio.sleep``). It is called
    once per session; an engine that holds a large model shares it across sessions itself. A turn
    detector's ``build`` may return None: no detector.
    """

    kind: EngineKind
    build: Callable[[Clock], Any]
    description: str = ""

    def make(self, clock: Clock, name: str) -> Any:
        """Build one session's engine, refusing one that lacks its kind's interface."""
        engine = self.build(clock)
        if engine is None and self.kind == "turn_detector":
            return None
        missing = [attr for attr in ENGINE_METHODS[self.kind] if not hasattr(engine, attr)]
        if missing:
            raise PluginError(
                f"{_flag(self.kind)} {name}: built a {type(engine).__name__}, which has no {', '.join(missing)} "
                f"(a {self.kind} engine needs {', '.join(ENGINE_METHODS[self.kind])})"
            )
        return engine


_BUILT_IN = "duplexer.actors.builtin_engines"
BUILT_IN_ENGINES: dict[str, str] = {
    "vad.silero": f"{_BUILT_IN}:SILERO_VAD",
    "vad.energy": f"{_BUILT_IN}:ENERGY_VAD",
    "asr.whisper": f"{_BUILT_IN}:WHISPER_ASR",
    "llm.local": f"{_BUILT_IN}:LOCAL_LLM",
    "tts.piper": f"{_BUILT_IN}:PIPER_TTS",
    "tts.silent": f"{_BUILT_IN}:SILENT_TTS",
    "turn_detector.smart-turn": f"{_BUILT_IN}:SMART_TURN",
    "turn_detector.smollm2": f"{_BUILT_IN}:SMOLLM2_TURN",
    "turn_detector.fused": f"{_BUILT_IN}:FUSED_TURN",
    "turn_detector.none": f"{_BUILT_IN}:NO_TURN_DETECTOR",
}
"""Built-in engines as ``KIND.NAME -> module:attribute``, resolved exactly as plug-ins are. The
real models' entries are the shared real set (:func:`duplexer.actors.models.loading.load_models`)."""


def _flag(kind: str) -> str:
    return "--" + kind.replace("_", "-")


def _installed(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def _load(reference: str | EntryPoint, what: str) -> Any:
    """Import ``module:attribute`` (or an entry point's); any failure is one line naming ``what``."""
    value = _value(reference)
    module_name, _, attribute = value.partition(":")
    try:
        obj: Any = importlib.import_module(module_name.strip())
        for part in attribute.strip().split(".") if attribute.strip() else ():
            obj = getattr(obj, part)
    except PolicyTableError as exc:
        raise PluginError(f"{what} ({value}) is refused: {exc}") from None
    except Exception as exc:  # a plug-in's import may fail any way at all; the user gets one line
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(f"{what} ({value}) cannot be loaded: {type(exc).__name__}: {detail}") from None
    return obj


def _names(keys: Iterable[str], kind: EngineKind) -> list[str]:
    prefix = kind + "."
    return [key[len(prefix) :] for key in keys if key.startswith(prefix)]


def built_in_engine_names(kind: EngineKind) -> list[str]:
    """The built-in names ``--KIND`` accepts (no look at the installed plug-ins)."""
    return _names(BUILT_IN_ENGINES, kind)


def engine_names(kind: EngineKind) -> list[str]:
    """The names ``--KIND`` accepts: built-ins first, then installed plug-ins."""
    built_in = built_in_engine_names(kind)
    return built_in + [name for name in _names(_installed(ENGINE_GROUP), kind) if name not in built_in]


def engine_plugin(kind: EngineKind, name: str) -> EnginePlugin:
    """The engine ``--KIND NAME`` names; a :class:`PluginError` when it is unknown, fails to import,
    or is not an :class:`EnginePlugin` of that kind."""
    if kind not in ENGINE_KINDS:
        raise PluginError(f"unknown engine kind {kind!r} (known: {', '.join(ENGINE_KINDS)})")
    key = f"{kind}.{name}"
    reference: str | EntryPoint | None = BUILT_IN_ENGINES.get(key) or _installed(ENGINE_GROUP).get(key)
    if reference is None:
        raise PluginError(
            f"{_flag(kind)}: unknown {kind} engine {name!r} (known: {', '.join(engine_names(kind))}); "
            f"a plug-in registers it as {key!r} in the {ENGINE_GROUP} entry points"
        )
    what = f"{_flag(kind)} {name}"
    plugin = _load(reference, what)
    if not isinstance(plugin, EnginePlugin):
        raise PluginError(
            f"{what}: {_value(reference)} is a {type(plugin).__name__}, not a duplexer.actors.plugins.EnginePlugin"
        )
    if plugin.kind != kind:
        raise PluginError(f"{what}: {_value(reference)} is a {plugin.kind} engine, not a {kind} engine")
    return plugin


def _value(reference: str | EntryPoint) -> str:
    return reference.value if isinstance(reference, EntryPoint) else reference


def policy_names() -> list[str]:
    """The names ``--policy`` accepts: the presets, their aliases, then installed plug-ins."""
    built_in = [*POLICY_PRESETS, *PRESET_ALIASES]
    return built_in + [name for name in _installed(POLICY_GROUP) if name not in built_in]


def policy_named(name: str) -> PolicyParams:
    """The policy ``--policy NAME`` names: a built-in preset, else an installed plug-in, loaded and
    held to the built-in table's checks (a :class:`PluginError` naming the first broken pair)."""
    if name in POLICY_PRESETS or name in PRESET_ALIASES:
        return preset(name)
    reference = _installed(POLICY_GROUP).get(name)
    if reference is None:
        raise PluginError(
            f"unknown policy {name!r} (known: {', '.join(policy_names())}); "
            f"a plug-in registers it in the {POLICY_GROUP} entry points"
        )
    what = f"policy plug-in {name!r}"
    policy = _load(reference, what)
    if not isinstance(policy, PolicyParams):
        raise PluginError(
            f"{what}: {reference.value} is a {type(policy).__name__}, not a "
            "duplexer.policies.params.PolicyParams (or subclass) instance"
        )
    table = type(policy).table
    if table is not None:
        if not isinstance(table, PolicyTable):
            raise PluginError(f"{what}: its table is a {type(table).__name__}, not a PolicyTable")
        try:
            check_table(table.name, table.transitions, table.timers)
        except PolicyTableError as exc:
            raise PluginError(f"{what} is refused: {exc}") from None
    return policy
