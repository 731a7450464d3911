"""Tools from a configuration file (``--tools FILE``, or a persona's ``tools:``), not from Python code.

The file (YAML or JSON) lists each tool's function, by module path (``package.module:function``)
or by the name of an entry point in the ``duplexer.tools`` group, with its JSON schema, timeout
and whether it has side effects; an allowlist says which of them may be loaded and called::

    allow: [get_weather, send_message]
    tool_choice: auto              # optional: what OpenAI-compatible engines ask the server for
    tools:
      - name: get_weather
        function: concierge_tools:get_weather
        description: Current weather for a city.
        parameters:
          type: object
          properties:
            city: {type: string, description: The city's name.}
            unit: {type: string, enum: [celsius, fahrenheit], default: celsius}
          required: [city]
        timeout_ms: 5000
        side_effects: false

Only allowlisted tools are imported at all; a listed tool that is not allowed is never loaded,
and the session's :class:`~duplexer.actors.tool_registry.ToolRegistry` refuses calls to any
name outside the list. A module beside the tools file is importable by its name, so a
project's tools can live next to their configuration.

The file is read with the limits of :mod:`duplexer.runtime.untrusted` (size, nesting, no YAML
aliases, bounded numbers and strings); anything wrong is a :class:`ToolConfigError` whose
one-line message names the file and the field.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from duplexer.actors.tool_registry import TOOL_NAME_PATTERN, Tool, ToolDefinitionError, ToolRegistry
from duplexer.actors.tool_schema import SchemaError, fields_from_schema
from duplexer.runtime.untrusted import MAX_JSON_DEPTH, MAX_NUMBER_DIGITS, UntrustedInputError, finite_number

ENTRY_POINT_GROUP = "duplexer.tools"
"""Where ``entry_point:`` names are looked up: a package declares its tools under this group."""
MAX_TOOLS_FILE_BYTES = 256 * 1024
"""Largest tools file read; an honest one with dozens of tools is a few KiB."""
MAX_TOOLS = 64
"""Most tools one file may declare."""
MAX_TOOL_TIMEOUT_MS = 600_000.0
"""Longest timeout a tool may declare: ten minutes."""
MAX_DESCRIPTION_CHARS = 2000
_MODULE_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

ToolChoice = Literal["auto", "required", "none"] | str


class ToolConfigError(ValueError):
    """A tools file (or a persona's tools) is unusable; the one-line message names the file and field."""


class ToolEntry(BaseModel):
    """One tool as the file declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=f"^(?:{TOOL_NAME_PATTERN.pattern})$")
    function: str = Field("", max_length=200, pattern=_MODULE_PATH + "|^$")
    """``package.module:function``; or leave it out and give ``entry_point``."""
    entry_point: str = Field("", max_length=200)
    """A name in the ``duplexer.tools`` entry-point group."""
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)
    """What the model is told the tool does; default: the first paragraph of the function's docstring."""
    parameters: dict[str, Any] | None = None
    """The arguments' JSON schema (an object schema); default: from the function's typed signature."""
    timeout_ms: float = Field(gt=0, le=MAX_TOOL_TIMEOUT_MS)
    side_effects: bool
    """No default: every tool says whether it changes the world (then it waits for commit and playout)."""

    @model_validator(mode="after")
    def _one_source(self) -> ToolEntry:
        if bool(self.function) == bool(self.entry_point):
            raise ValueError("give exactly one of function (package.module:function) or entry_point")
        return self


class ToolFile(BaseModel):
    """A whole tools file."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    allow: tuple[str, ...] = Field(max_length=MAX_TOOLS)
    """The allowlist: only these tools are loaded and may be called."""
    tool_choice: str = Field("auto", max_length=64)
    """``auto``, ``required``, ``none`` or one tool's name (forces that call; llama.cpp's server streams only then)."""
    tools: tuple[ToolEntry, ...] = Field(max_length=MAX_TOOLS)

    @model_validator(mode="after")
    def _consistent(self) -> ToolFile:
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"tools: {twice[0]!r} is declared twice")
        unknown = [name for name in self.allow if name not in names]
        if unknown:
            raise ValueError(f"allow: names {unknown[0]!r}, which no entry of tools declares")
        if self.tool_choice not in ("auto", "required", "none") and self.tool_choice not in self.allow:
            raise ValueError(f"tool_choice: {self.tool_choice!r} is not auto, required, none or an allowed tool")
        return self


@dataclass(frozen=True)
class Toolset:
    """What a session gets from a tools file: the registry to run, and how OpenAI engines ask for calls."""

    registry: ToolRegistry
    tool_choice: str = "auto"
    source: str = ""
    """The file the tools came from, for messages."""

    def openai_tools(self) -> list[dict[str, Any]]:
        return self.registry.openai_tools()


# ---------------------------------------------------------------- reading the file


def _check_yaml_shape(text: str, where: str) -> None:
    """Refuse YAML aliases (a few bytes can expand into billions of nodes) and deep nesting, before building."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ToolConfigError(f"{where}: YAML anchors and aliases are not allowed")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_JSON_DEPTH:
                    raise ToolConfigError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ToolConfigError(f"{where}: not valid YAML or JSON{at}") from None


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_tool_file(data: bytes | str, where: str) -> ToolFile:
    """The validated contents of a tools file; nothing is imported. ``where`` names it in errors."""
    if len(data) > MAX_TOOLS_FILE_BYTES:
        raise ToolConfigError(f"{where}: {len(data)} bytes (at most {MAX_TOOLS_FILE_BYTES})")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolConfigError(f"{where}: not UTF-8 text") from None
    if "\x00" in data:
        raise ToolConfigError(f"{where}: contains a NUL character")
    _check_yaml_shape(data, where)
    try:
        loaded = yaml.safe_load(data)
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError):
        raise ToolConfigError(f"{where}: not valid YAML or JSON") from None
    return tool_file_from_mapping(loaded, where)


def _check_numbers(value: Any, field: str) -> None:
    """Every number anywhere (a schema's defaults and enums too) is finite and of bounded size."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_numbers(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_numbers(item, f"{field}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            finite_number(value, field or "(top level)", -(10.0**MAX_NUMBER_DIGITS), 10.0**MAX_NUMBER_DIGITS)
        except UntrustedInputError as exc:
            raise ToolConfigError(str(exc)) from None


def tool_file_from_mapping(loaded: Any, where: str) -> ToolFile:
    """A tools section already read (a persona's inline ``tools:``), validated."""
    if not isinstance(loaded, Mapping):
        raise ToolConfigError(f"{where}: (top level): expected a mapping with allow and tools")
    try:
        _check_numbers(loaded, "")
    except ToolConfigError as exc:
        raise ToolConfigError(f"{where}: {exc}") from None
    try:
        return ToolFile.model_validate(loaded)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "missing":
            message = "missing (required)"
        message = message.removeprefix("Value error, ")
        if not err["loc"]:  # a check across fields: its message starts with the field
            raise ToolConfigError(f"{where}: {message}") from None
        raise ToolConfigError(f"{where}: {_field(tuple(err['loc']))}: {message}") from None


# ---------------------------------------------------------------- loading the functions


@contextmanager
def _importable_from(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _resolve(entry: ToolEntry, field: str, folder: Path | None) -> Callable[..., Any]:
    if entry.entry_point:
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=entry.entry_point)
        if not found:
            raise ToolConfigError(f"{field}.entry_point: no {entry.entry_point!r} in group {ENTRY_POINT_GROUP}")
        try:
            func: Any = next(iter(found)).load()
        except Exception as exc:
            raise ToolConfigError(f"{field}.entry_point: cannot load ({type(exc).__name__}: {exc})") from None
    else:
        module_name, attribute = entry.function.split(":")
        try:
            with _importable_from(folder):
                module = importlib.import_module(module_name)
        except Exception as exc:
            raise ToolConfigError(
                f"{field}.function: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
            ) from None
        func = getattr(module, attribute, None)
        if func is None:
            raise ToolConfigError(f"{field}.function: {module_name!r} has no {attribute!r}")
    if not inspect.iscoroutinefunction(func):
        raise ToolConfigError(f"{field}: {entry.function or entry.entry_point} is not an async function")
    return func  # type: ignore[no-any-return]


def _check_signature(func: Callable[..., Any], fields: Mapping[str, tuple[Any, Any, str]], field: str) -> None:
    """The schema and the function agree: every property is a parameter, every needed parameter is required."""
    params = inspect.signature(func).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in fields:
        if name not in params and not takes_any:
            raise ToolConfigError(f"{field}.parameters.properties.{name}: the function has no such parameter")
    for param in params.values():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if param.default is param.empty and param.name not in fields:
            raise ToolConfigError(f"{field}.parameters: the function needs {param.name!r}; list it under properties")


def _build_tool(entry: ToolEntry, field: str, folder: Path | None) -> Tool:
    func = _resolve(entry, field, folder)
    read_only = not entry.side_effects
    try:
        if entry.parameters is None:
            tool = Tool.from_function(func, read_only=read_only, timeout_ms=entry.timeout_ms, name=entry.name)
            return tool if not entry.description else _described(tool, entry.description)
        try:
            fields = fields_from_schema(entry.parameters)
        except SchemaError as exc:
            raise ToolConfigError(f"{field}.parameters{exc.where}: {exc}") from None
        _check_signature(func, fields, field)
        description = entry.description or (inspect.cleandoc(func.__doc__ or "").split("\n\n")[0].replace("\n", " "))
        return Tool.from_fields(
            entry.name, func, fields, read_only=read_only, timeout_ms=entry.timeout_ms, description=description
        )
    except ToolDefinitionError as exc:
        raise ToolConfigError(f"{field}: {exc}") from None


def _described(tool: Tool, description: str) -> Tool:
    return Tool(tool.name, description, tool.func, tool.arguments_model, tool.timeout_ms, tool.read_only)


def build_toolset(spec: ToolFile, where: str, folder: Path | None = None) -> Toolset:
    """Import the allowed tools of a validated file; modules in ``folder`` are importable by name."""
    allowed = set(spec.allow)
    tools = []
    for index, entry in enumerate(spec.tools):
        if entry.name not in allowed:
            continue  # never imported: the allowlist is what may run
        try:
            tools.append(_build_tool(entry, f"tools[{index}]", folder))
        except ToolConfigError as exc:
            raise ToolConfigError(f"{where}: {exc}") from None
    return Toolset(ToolRegistry(tools, allowed=allowed), spec.tool_choice, where)


def load_tools(path: Path) -> Toolset:
    """``--tools FILE``: read, validate and import; a :class:`ToolConfigError` names the file and field."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOOLS_FILE_BYTES + 1)
    except OSError as exc:
        raise ToolConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return build_toolset(parse_tool_file(data, str(path)), str(path), path.resolve().parent)


def tools_from_persona(value: Any, persona_path: Path) -> Toolset:
    """A persona's ``tools:``: a tools section inline, or the path of a tools file relative to the persona."""
    if isinstance(value, str):
        return load_tools(persona_path.parent / value)
    where = f"{persona_path}: tools"
    return build_toolset(tool_file_from_mapping(value, where), where, persona_path.resolve().parent)


def add_tools_argument(parser: Any) -> None:
    """The ``--tools FILE`` option of a command that runs sessions."""
    parser.add_argument(
        "--tools",
        type=Path,
        metavar="FILE",
        help="tools the bot may call: a YAML/JSON file of functions, schemas, timeouts, side effects "
        "and an allowlist (see docs/tools.md)",
    )


def registry_from_args(args: Any) -> ToolRegistry | None:
    """The registry of ``--tools FILE``, or None without the option; ToolConfigError names the file and field."""
    path = getattr(args, "tools", None)
    return load_tools(path).registry if path is not None else None
