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

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from duplexer.actors.tool_registry import TOOL_NAME_PATTERN
from duplexer.runtime.untrusted import UntrustedInputError, slug
from duplexer.sims.scenario_yaml import MAX_SCENARIO_BYTES, read_yaml

DEFAULT_MS_PER_WORD = 280.0
"""Speaking time per word when a step gives no duration (about 210 words per minute)."""
MAX_SIMULATED_MS = 3_600_000.0
"""Most simulated time one scenario may take (1 hour), and so the largest time any field may give:
``max_duration_ms`` is at most this, and a script that needs longer is refused when it is loaded."""
MAX_NAME_CHARS = 100
"""Longest scenario name (printable characters; its file names are a slug of it)."""
MAX_TEXT_CHARS = 10_000
"""Longest text a field may hold (what the user says, a reply, a description)."""
MAX_LIST_ITEMS = 1000
"""Most steps in a script, and most pauses, segments or words in a step."""
MAX_TOKENS_PER_S = 100_000.0
"""Fastest scripted LLM; a bound, so the time per token is never zero."""
MAX_RTF = 100.0
"""Slowest scripted TTS, as a real-time factor."""


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _has_words(text: str) -> str:
    if not text.split():
        raise ValueError("must hold at least one word, not only spaces")
    return text


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must be printable characters only (no control characters, tabs or newlines)")
    return text


def _tool_name(text: str) -> str:
    if not TOOL_NAME_PATTERN.fullmatch(text):
        raise ValueError("a tool name is letters, digits, _ . - (at most 64), starting with a letter or _")
    return text


# Numbers are strict: ``true`` is not 1 and ``"3"`` is not 3; NaN and infinity are refused.
NonNegMs = Annotated[float, Field(strict=True, ge=0, le=MAX_SIMULATED_MS)]
PositiveMs = Annotated[float, Field(strict=True, gt=0, le=MAX_SIMULATED_MS)]
Probability = Annotated[float, Field(strict=True, ge=0, le=1)]
Flag = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Words = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_has_words)]
ScenarioName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_printable)]
ToolName = Annotated[str, AfterValidator(_tool_name)]
ParamName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]


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

    after_word: Annotated[int, Field(strict=True, ge=1, le=MAX_TEXT_CHARS)]
    ms: PositiveMs
    end_of_turn: Probability | None = None
    """What the scripted turn detector answers once this pause's words are transcribed: how likely
    the turn is over there (a researcher's detector, scripted; absent: no opinion, p = 0.5)."""


class Segment(_Strict):
    """Explicit speech timing, relative to the step's start (from real recordings)."""

    start_ms: NonNegMs
    end_ms: PositiveMs
    words: Annotated[list[tuple[NonNegMs, Text]], Field(max_length=MAX_LIST_ITEMS)] = []
    end_of_turn: Probability | None = None
    """What the scripted turn detector answers once the words through this segment are transcribed
    (on the last segment: the turn's end, which the step's own ``end_of_turn`` may give instead)."""

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"end_ms ({self.end_ms}) must be after start_ms ({self.start_ms})")
        return self


JsonType = Literal["string", "integer", "number", "boolean", "array", "object"]


class ToolCallText(_Strict):
    """The tool call the scripted LLM writes after its preface."""

    name: ToolName
    args: dict[str, Any] = {}
    format: Literal["step_audio", "openai"] = "step_audio"
    """step_audio: ``<tool_call>`` text in the reply stream; openai: function-call fragments."""
    text: Text | None = None
    """Exact text written instead of a well-formed call, to script a malformed one."""


class ToolBehaviour(_Strict):
    """How the scripted tool behind a call answers, and how it is registered."""

    latency_ms: NonNegMs = 0.0
    jitter: Probability = 0.0
    """Relative spread of this tool's latency (its own: ``engines.jitter`` does not apply)."""
    result: Any = "ok"
    error: Text | None = None
    """The tool raises with this message instead of answering."""
    side_effect: Flag = False
    """Side-effecting tools run only after their reply was played to the end, uninterrupted."""
    timeout_ms: PositiveMs = 10_000.0
    params: dict[ParamName, JsonType] | None = None
    """The tool's parameters and their JSON types (default: those of ``call.args``)."""
    registered: Flag = True
    """False: the model calls a tool the session does not have."""


class ToolReply(_Strict):
    """A scripted reply that calls a tool: preface, call, the tool's behaviour, continuation."""

    preface: Text = ""
    call: ToolCallText
    tool: ToolBehaviour = ToolBehaviour()
    then: Text = ""
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

    say: Words
    start: Start | None = None
    duration_ms: PositiveMs | None = None
    pauses: Annotated[list[Pause], Field(max_length=MAX_LIST_ITEMS)] = []
    segments: Annotated[list[Segment], Field(min_length=1, max_length=MAX_LIST_ITEMS)] | None = None
    reply: Reply | None = None
    """What the scripted LLM answers to this turn (default: an echo); it may call a tool."""
    end_of_turn: Probability | None = None
    """What the scripted turn detector answers once the whole turn is transcribed (see Pause)."""

    @model_validator(mode="after")
    def _consistent(self) -> Say:
        n_words = len(self.say.split())
        for pause in self.pauses:
            if pause.after_word >= n_words:
                raise ValueError(f"pauses: after_word {pause.after_word} must be less than the {n_words} words said")
        if self.segments is not None:
            if self.pauses or self.duration_ms is not None:
                raise ValueError("give either segments, or duration_ms/pauses, not both")
            if self.end_of_turn is not None and self.segments[-1].end_of_turn is not None:
                raise ValueError("the turn's end_of_turn is given twice: on the step and on its last segment")
            for earlier, later in zip(self.segments, self.segments[1:], strict=False):
                if later.start_ms < earlier.end_ms:
                    raise ValueError(
                        f"segments out of order: one starts at {later.start_ms} ms before the previous "
                        f"ends at {earlier.end_ms} ms"
                    )
        return self


class Backchannel(_Strict):
    """A short acknowledgement ("mm-hmm") that should not stop the bot."""

    backchannel: Words
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
    tokens_per_s: Annotated[float, Field(strict=True, gt=0, le=MAX_TOKENS_PER_S)] = 40.0
    continuation_ttft_ms: NonNegMs | None = None
    """Time to first token of a continuation after a tool result (default: ttft_ms)."""


class TtsModel(_Strict):
    first_chunk_ms: NonNegMs = 120.0
    rtf: Annotated[float, Field(strict=True, ge=0, le=MAX_RTF)] = 0.2
    ms_per_char: PositiveMs = 65.0


class TurnDetectorModel(_Strict):
    latency_ms: NonNegMs = 30.0
    """From the detector being asked (a transcript, or a pause starting) to its answer."""


class EngineModels(_Strict):
    """Latency models of the scripted engines."""

    vad: VadModel = VadModel()
    asr: AsrModel = AsrModel()
    llm: LlmModel = LlmModel()
    tts: TtsModel = TtsModel()
    turn_detector: TurnDetectorModel = TurnDetectorModel()
    jitter: Probability = 0.1
    """Relative spread of every latency, drawn from the seeded RNG."""


SCRIPTED_DETECTOR = "scripted"
NO_DETECTOR = "none"
TEXT_DETECTORS = ("smollm2",)
"""Text detectors a scenario may name: the live code, reading the scripted words (slow: a real model)."""
DETECTOR_NAMES = (SCRIPTED_DETECTOR, NO_DETECTOR, *TEXT_DETECTORS)


def _detector_name(text: str) -> str:
    if text not in DETECTOR_NAMES:
        raise ValueError("must be one of " + ", ".join(DETECTOR_NAMES))
    return text


DetectorName = Annotated[str, Field(strict=True, max_length=64), AfterValidator(_detector_name)]


class Scenario(_Strict):
    name: ScenarioName
    description: Text = ""
    engines: EngineModels = EngineModels()
    turn_detector: DetectorName | None = None
    """The end-of-turn detector of the run: ``scripted`` answers the steps' ``end_of_turn``
    probabilities, a text detector's name runs it on the words, ``none`` leaves silence alone.
    Default: ``scripted`` when a step scripts a probability, else none."""
    policy: dict[Annotated[str, Field(max_length=64)], float | int | bool] = {}
    """Checked against the policy's parameters (names, types, finite values) by :func:`policy_for`."""
    script: Annotated[list[Step], Field(min_length=1, max_length=MAX_LIST_ITEMS)]
    tail_ms: NonNegMs = 3000.0
    """Silence simulated after the last step, so the bot's last reply plays out."""
    max_duration_ms: PositiveMs = 180_000.0


def _loc(loc: tuple[Any, ...]) -> str:
    items = list(loc)
    if len(items) > 2 and items[0] == "script" and items[2] in STEP_KEYS:
        del items[2]  # the union's tag, not a field the user wrote
    if len(items) > 3 and items[:1] == ["script"] and items[2] == "reply" and items[3] in ("text", "tool"):
        del items[3]  # the reply union's tag
    if len(items) > 2 and items[0] == "policy" and items[2] in ("float", "int", "bool"):
        del items[2]  # the member of the value's union, not a field
    parts: list[str] = []
    for item in items:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _message(err: Any) -> str:
    """Pydantic's message for one error, as a sentence about the user's value."""
    if err["type"] == "extra_forbidden":
        return "unknown field"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"].endswith("_type") or err["type"].endswith("_parsing"):
        value = err.get("input")
        msg += f", got {'true/false' if isinstance(value, bool) else type(value).__name__}"
    return msg


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
                names = sorted(repr(key)[:40] for key in step)  # repr: a control character is not a line break
                found = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") or "nothing"
                raise ScenarioError(
                    f"{path}: script[{i}]: unknown event ({found}); a step has exactly one of " + ", ".join(STEP_KEYS)
                )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ScenarioError(f"{path}: {_loc(err['loc'])}: {_message(err)}") from None
    _check_anchors(scenario, path)
    _check_detector(scenario, path)
    _check_tools(scenario, path)
    _check_budget(scenario, path)
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


def scripted_end_of_turn(scenario: Scenario) -> list[str]:
    """Where the script gives the detector's answer, as field paths (script[0].pauses[1].end_of_turn)."""
    found = []
    for i, step in enumerate(scenario.script):
        if isinstance(step, Say):
            pauses = enumerate(step.pauses)
            found += [f"script[{i}].pauses[{j}].end_of_turn" for j, p in pauses if p.end_of_turn is not None]
            segments = enumerate(step.segments or ())
            found += [f"script[{i}].segments[{j}].end_of_turn" for j, g in segments if g.end_of_turn is not None]
            if step.end_of_turn is not None:
                found.append(f"script[{i}].end_of_turn")
    return found


def detector_of(scenario: Scenario) -> str | None:
    """The detector the run uses (None: silence alone decides the end of a turn)."""
    if scenario.turn_detector is not None:
        return None if scenario.turn_detector == NO_DETECTOR else scenario.turn_detector
    return SCRIPTED_DETECTOR if scripted_end_of_turn(scenario) else None


def _check_detector(scenario: Scenario, path: Path) -> None:
    """A probability only the scripted detector reads must not sit beside another detector, unread."""
    scripted = scripted_end_of_turn(scenario)
    if scripted and scenario.turn_detector in TEXT_DETECTORS:
        raise ScenarioError(
            f"{path}: {scripted[0]}: only the scripted turn detector reads it, and turn_detector is "
            f"{scenario.turn_detector!r}; drop the probabilities or set turn_detector: scripted"
        )


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
    """Read and validate one scenario file; any problem raises ScenarioError naming file and field.

    Every limit is checked here (the YAML's in :mod:`duplexer.sims.scenario_yaml`), so nothing
    past this point meets a value it cannot use; docs/scenarios.md states them ("Limits")."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        value = read_yaml(data)
    except UntrustedInputError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(value, path)


def planned_ms(scenario: Scenario) -> float:
    """The least simulated time the script takes: every step's own length, the gaps and absolute
    times it gives, and the tail; waits for the bot only add to it."""
    t_ms = 0.0
    for step in scenario.script:
        start = step.start
        if start is not None and start.at_ms is not None:
            t_ms = max(t_ms, start.at_ms)
        elif start is not None and start.after != "bot_start":  # a barge-in may begin before the previous step ends
            t_ms += start.gap_ms
        t_ms += step_ms(step)
    return t_ms + scenario.tail_ms


def step_ms(step: Say | Backchannel | Noise | Silence) -> float:
    """How long one step lasts once it has begun."""
    if isinstance(step, Say):
        if step.segments is not None:
            return step.segments[-1].end_ms
        speaking_ms = step.duration_ms or DEFAULT_MS_PER_WORD * len(step.say.split())
        return speaking_ms + sum(p.ms for p in step.pauses)
    if isinstance(step, Backchannel):
        return step.duration_ms
    if isinstance(step, Noise):
        return step.noise.duration_ms
    return step.silence_ms


def _check_budget(scenario: Scenario, path: Path) -> None:
    """A script that cannot end within max_duration_ms is a mistake, not a run to cut short."""
    needed_ms = planned_ms(scenario)
    if needed_ms > scenario.max_duration_ms:
        raise ScenarioError(
            f"{path}: max_duration_ms: the script needs at least {needed_ms:.0f} ms of simulated time, "
            f"more than max_duration_ms ({scenario.max_duration_ms:.0f}; at most {MAX_SIMULATED_MS:.0f})"
        )


def report_name(scenario: Scenario) -> str:
    """The file-name stem of a scenario's outputs: a slug of its name, so no name leaves the report folder."""
    return slug(scenario.name, fallback="scenario")


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
    stems: dict[str, tuple[str, Path]] = {}
    for f, sc in loaded:
        if sc.name in seen:
            raise ScenarioError(f"{f}: name: {sc.name!r} is already used by {seen[sc.name]}")
        seen[sc.name] = f
        stem = report_name(sc).lower()  # case-insensitive file systems would merge two stems
        if stem in stems:
            other, other_path = stems[stem]
            raise ScenarioError(
                f"{f}: name: {sc.name!r} and {other!r} ({other_path}) give the same file name {report_name(sc)!r}"
            )
        stems[stem] = (sc.name, f)
    return loaded
