"""The scenario format: a scripted user, engine latency models and policy overrides, in YAML.

A scenario is a list of user-side steps played in order. Each step starts at an
anchor: after the previous step, after the bot finishes, after the bot starts
speaking (barge-ins and backchannels), or at an absolute time. See
``docs/scenarios.md`` for the full reference; :func:`load_scenario` validates a
file and names the file and field of any error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

DEFAULT_MS_PER_WORD = 280.0
"""Speaking time per word when a step gives no duration (about 210 words per minute)."""


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NonNegMs = Annotated[float, Field(ge=0)]
PositiveMs = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Start(_Strict):
    """When a step begins. ``after``: previous (end of the previous step), bot_done (bot stopped
    speaking), bot_start (bot began speaking), or absent with ``at_ms`` (absolute time)."""

    after: Literal["previous", "bot_done", "bot_start"] | None = None
    at_ms: NonNegMs | None = None
    gap_ms: NonNegMs = 0.0
    wait_ms: PositiveMs = 15000.0
    """bot_done/bot_start: if the bot has not got there this long after the previous step, go anyway."""

    @model_validator(mode="after")
    def _one_anchor(self) -> Start:
        if (self.after is None) == (self.at_ms is None):
            raise ValueError("give exactly one of 'after' or 'at_ms'")
        return self


class Pause(_Strict):
    """A mid-turn pause after word number ``after_word`` (1-based)."""

    after_word: Annotated[int, Field(ge=1)]
    ms: PositiveMs


class Segment(_Strict):
    """Explicit speech timing, relative to the step's start (from real recordings)."""

    start_ms: NonNegMs
    end_ms: PositiveMs
    words: list[tuple[NonNegMs, str]] = []

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"end_ms ({self.end_ms}) must be after start_ms ({self.start_ms})")
        return self


JsonType = Literal["string", "integer", "number", "boolean", "array", "object"]


class ToolCallText(_Strict):
    """The tool call the scripted LLM writes after its preface."""

    name: str = Field(min_length=1)
    args: dict[str, Any] = {}
    format: Literal["step_audio", "openai"] = "step_audio"
    """step_audio: ``<tool_call>`` text in the reply stream; openai: function-call fragments."""
    text: str | None = None
    """Exact text written instead of a well-formed call, to script a malformed one."""


class ToolBehaviour(_Strict):
    """How the scripted tool behind a call answers, and how it is registered."""

    latency_ms: NonNegMs = 0.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Relative spread of this tool's latency (its own: ``engines.jitter`` does not apply)."""
    result: Any = "ok"
    error: str | None = None
    """The tool raises with this message instead of answering."""
    side_effect: bool = False
    """Side-effecting tools run only after their reply was played to the end, uninterrupted."""
    timeout_ms: PositiveMs = 10_000.0
    params: dict[str, JsonType] | None = None
    """The tool's parameters and their JSON types (default: those of ``call.args``)."""
    registered: bool = True
    """False: the model calls a tool the session does not have."""


class ToolReply(_Strict):
    """A scripted reply that calls a tool: preface, call, the tool's behaviour, continuation."""

    preface: str = ""
    call: ToolCallText
    tool: ToolBehaviour = ToolBehaviour()
    then: str = ""
    """What the model says once the result is in."""


def _reply_kind(value: Any) -> str:
    return "tool" if isinstance(value, (dict, ToolReply)) else "text"


Reply = Annotated[
    Annotated[str, Tag("text")] | Annotated[ToolReply, Tag("tool")],
    Discriminator(_reply_kind),
]
"""A reply is text, or (a mapping) a tool-calling reply."""


class Say(_Strict):
    """A user turn (or a barge-in, when anchored on bot_start)."""

    say: str = Field(min_length=1)
    start: Start | None = None
    duration_ms: PositiveMs | None = None
    pauses: list[Pause] = []
    segments: list[Segment] | None = None
    reply: Reply | None = None
    """What the scripted LLM answers to this turn (default: an echo); it may call a tool."""

    @model_validator(mode="after")
    def _consistent(self) -> Say:
        n_words = len(self.say.split())
        for pause in self.pauses:
            if pause.after_word >= n_words:
                raise ValueError(f"pauses: after_word {pause.after_word} must be less than the {n_words} words said")
        if self.segments is not None:
            if self.pauses or self.duration_ms is not None:
                raise ValueError("give either segments, or duration_ms/pauses, not both")
            for earlier, later in zip(self.segments, self.segments[1:], strict=False):
                if later.start_ms < earlier.end_ms:
                    raise ValueError(
                        f"segments out of order: one starts at {later.start_ms} ms before the previous "
                        f"ends at {earlier.end_ms} ms"
                    )
        return self


class Backchannel(_Strict):
    """A short acknowledgement ("mm-hmm") that should not stop the bot."""

    backchannel: str = Field(min_length=1)
    start: Start | None = None
    duration_ms: PositiveMs = 300.0


class NoiseBurst(_Strict):
    """Sound without words (a door, a cough): the VAD sees ``probability``."""

    duration_ms: PositiveMs
    probability: Probability = 0.8


class Noise(_Strict):
    noise: NoiseBurst
    start: Start | None = None


class Silence(_Strict):
    """The user says nothing for a while."""

    silence_ms: PositiveMs
    start: Start | None = None


STEP_KEYS = {"say": Say, "backchannel": Backchannel, "noise": Noise, "silence_ms": Silence}
"""Each step is told apart by the one key that names its kind."""


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((key for key in STEP_KEYS if key in value), None)
    return next((key for key, model in STEP_KEYS.items() if isinstance(value, model)), None)


Step = Annotated[
    Annotated[Say, Tag("say")]
    | Annotated[Backchannel, Tag("backchannel")]
    | Annotated[Noise, Tag("noise")]
    | Annotated[Silence, Tag("silence_ms")],
    Discriminator(_step_kind),
]


class VadModel(_Strict):
    onset_lag_ms: NonNegMs = 60.0
    offset_lag_ms: NonNegMs = 100.0


class AsrModel(_Strict):
    final_latency_ms: NonNegMs = 150.0
    partial_latency_ms: NonNegMs = 60.0
    partial_interval_ms: PositiveMs = 500.0


class LlmModel(_Strict):
    ttft_ms: NonNegMs = 250.0
    tokens_per_s: PositiveMs = 40.0
    continuation_ttft_ms: NonNegMs | None = None
    """Time to first token of a continuation after a tool result (default: ttft_ms)."""


class TtsModel(_Strict):
    first_chunk_ms: NonNegMs = 120.0
    rtf: Annotated[float, Field(ge=0)] = 0.2
    ms_per_char: PositiveMs = 65.0


class EngineModels(_Strict):
    """Latency models of the scripted engines."""

    vad: VadModel = VadModel()
    asr: AsrModel = AsrModel()
    llm: LlmModel = LlmModel()
    tts: TtsModel = TtsModel()
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Relative spread of every latency, drawn from the seeded RNG."""


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    engines: EngineModels = EngineModels()
    policy: dict[str, float | int | bool] = {}
    script: list[Step] = Field(min_length=1)
    tail_ms: NonNegMs = 3000.0
    """Silence simulated after the last step, so the bot's last reply plays out."""
    max_duration_ms: PositiveMs = 180_000.0


def _loc(loc: tuple[Any, ...]) -> str:
    items = list(loc)
    if len(items) > 2 and items[0] == "script" and items[2] in STEP_KEYS:
        del items[2]  # the union's tag, not a field the user wrote
    if len(items) > 3 and items[:1] == ["script"] and items[2] == "reply" and items[3] in ("text", "tool"):
        del items[3]  # the reply union's tag
    parts: list[str] = []
    for item in items:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def parse_scenario(data: Any, path: Path) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping with name and script")
    script = data.get("script")
    if isinstance(script, list):
        for i, step in enumerate(script):
            if not isinstance(step, dict):
                raise ScenarioError(f"{path}: script[{i}]: a step must be a mapping")
            kinds = set(STEP_KEYS) & step.keys()
            if len(kinds) != 1:
                found = ", ".join(sorted(step)) or "nothing"
                raise ScenarioError(
                    f"{path}: script[{i}]: unknown event ({found}); a step has exactly one of " + ", ".join(STEP_KEYS)
                )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ScenarioError(f"{path}: {_loc(err['loc'])}: {msg}") from None
    _check_anchors(scenario, path)
    _check_tools(scenario, path)
    return scenario


def _check_anchors(scenario: Scenario, path: Path) -> None:
    last_at = -1.0
    for i, step in enumerate(scenario.script):
        if step.start is not None and step.start.at_ms is not None:
            if step.start.at_ms < last_at:
                raise ScenarioError(
                    f"{path}: script[{i}].start.at_ms: {step.start.at_ms} is before the previous "
                    f"absolute time {last_at}: times must not go backwards"
                )
            last_at = step.start.at_ms


def tool_replies(scenario: Scenario) -> list[tuple[int, ToolReply]]:
    """The steps whose scripted reply calls a tool, with their indexes."""
    return [
        (i, step.reply)
        for i, step in enumerate(scenario.script)
        if isinstance(step, Say) and isinstance(step.reply, ToolReply)
    ]


def _check_tools(scenario: Scenario, path: Path) -> None:
    """One tool name, one registration: every call of a tool must agree on how it is registered."""
    first: dict[str, tuple[int, ToolBehaviour]] = {}
    for i, reply in tool_replies(scenario):
        name, tool = reply.call.name, reply.tool
        if name not in first:
            first[name] = (i, tool)
            continue
        j, earlier = first[name]
        for attr in ("side_effect", "timeout_ms", "params", "registered"):
            if getattr(tool, attr) != getattr(earlier, attr):
                raise ScenarioError(
                    f"{path}: script[{i}].reply.tool.{attr}: tool {name!r} is registered differently "
                    f"in script[{j}]; give every call of one tool the same {attr}"
                )


def load_scenario(path: Path) -> Scenario:
    """Read and validate one scenario file; any problem raises ScenarioError naming file and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}: not valid YAML{where}") from None
    return parse_scenario(data, path)


def collect_scenarios(paths: list[Path]) -> list[tuple[Path, Scenario]]:
    """Every scenario under the given files and folders, sorted by path; names must be unique."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.y*ml") if p.suffix in {".yaml", ".yml"})
        elif path.exists():
            files.append(path)
        else:
            raise ScenarioError(f"{path}: no such file or folder")
    if not files:
        raise ScenarioError(f"{', '.join(map(str, paths))}: no scenario files (*.yaml) found")
    loaded = [(f, load_scenario(f)) for f in files]
    seen: dict[str, Path] = {}
    for f, sc in loaded:
        if sc.name in seen:
            raise ScenarioError(f"{f}: name: {sc.name!r} is already used by {seen[sc.name]}")
        seen[sc.name] = f
    return loaded
