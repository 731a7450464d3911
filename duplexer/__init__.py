"""duplexer: a full-duplex spoken-dialogue engine (Step-Audio real-time pipeline).

The public API (docs/api.md) is what this package exports; everything else may change. It is
imported on first use (module ``__getattr__``), so ``import duplexer`` stays cheap: a command line,
a benchmark or a Ray worker pays only for the parts it touches, and no layer is imported by another
through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # a conversation: engines and a policy, audio in, events out
    "open_session": "duplexer.sims.conversation",
    "Conversation": "duplexer.sims.conversation",
    "CONVERSATION_EVENTS": "duplexer.sims.conversation",
    "scripted_engines": "duplexer.protocols.engine_factory",
    "real_engines": "duplexer.protocols.engine_factory",
    "real_pipeline": "duplexer.protocols.engine_factory",
    "EngineFactory": "duplexer.protocols.engine_factory",
    "Engines": "duplexer.actors.engines",
    "PipelineConfig": "duplexer.actors.pipeline",
    "ToolRegistry": "duplexer.actors.tool_registry",
    "PolicyParams": "duplexer.policies.params",
    "preset": "duplexer.policies.params",
    "read_wav": "duplexer.protocols.wav",
    "run_virtual": "duplexer.runtime.clock",
    # the simulator
    "load_scenario": "duplexer.sims.scenario",
    "Scenario": "duplexer.sims.scenario",
    "ScenarioError": "duplexer.sims.scenario",
    "simulate": "duplexer.sims.simulator",
    "SimRun": "duplexer.sims.simulator",
    "score_run": "duplexer.sims.metrics",
    "sweep": "duplexer.sims.policy_sweep",
    "SweepPoint": "duplexer.sims.policy_sweep",
    # scoring recordings
    "score_recording": "duplexer.sims.audio_timeline",
    "RecordingScore": "duplexer.sims.audio_timeline",
    "TurnWindow": "duplexer.sims.audio_timeline",
}
"""Each public name and the module that defines it."""
_MODULES = {"events": "duplexer.runtime.events"}
"""Public modules: ``duplexer.events`` holds every event type a conversation reports."""

__all__ = [
    "CONVERSATION_EVENTS",
    "Conversation",
    "EngineFactory",
    "Engines",
    "PipelineConfig",
    "PolicyParams",
    "RecordingScore",
    "Scenario",
    "ScenarioError",
    "SimRun",
    "SweepPoint",
    "ToolRegistry",
    "TurnWindow",
    "__version__",
    "events",
    "load_scenario",
    "open_session",
    "preset",
    "read_wav",
    "real_engines",
    "real_pipeline",
    "run_virtual",
    "score_recording",
    "score_run",
    "scripted_engines",
    "simulate",
    "sweep",
]
"""The public API: every name here is documented in docs/api.md and kept stable."""


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name not in _EXPORTS:
        raise AttributeError(f"module 'duplexer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and editors see; nothing is imported at run time
    from duplexer.actors.engines import Engines
    from duplexer.actors.pipeline import PipelineConfig
    from duplexer.actors.tool_registry import ToolRegistry
    from duplexer.policies.params import PolicyParams, preset
    from duplexer.protocols.engine_factory import EngineFactory, real_engines, real_pipeline, scripted_engines
    from duplexer.protocols.wav import read_wav
    from duplexer.runtime import events
    from duplexer.runtime.clock import run_virtual
    from duplexer.sims.audio_timeline import RecordingScore, TurnWindow, score_recording
    from duplexer.sims.conversation import CONVERSATION_EVENTS, Conversation, open_session
    from duplexer.sims.metrics import score_run
    from duplexer.sims.policy_sweep import SweepPoint, sweep
    from duplexer.sims.scenario import Scenario, ScenarioError, load_scenario
    from duplexer.sims.simulator import SimRun, simulate
