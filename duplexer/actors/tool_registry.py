"""The tool registry: async Python functions the LLM may call, with schemas from their signatures.

A tool's JSON schema comes from its typed parameters and its docstring (the first paragraph
describes the tool; an ``Args:`` section or ``:param name:`` lines describe the parameters).
Arguments are validated against that schema, strictly, before any call. Each tool declares a
timeout and whether it is read-only: read-only tools may run speculatively and are cancelled
with their reply; side-effecting ones run only for a reply the user heard to its end.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

DEFAULT_TOOL_TIMEOUT_MS = 10_000.0
MAX_RESULT_CHARS = 2000
"""A tool result longer than this is cut before it enters the prompt and the history."""

ToolFunction = Callable[..., Awaitable[Any]]

_SUPPORTED = (str, int, float, bool, type(None), Any)
TOOL_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
"""What a tool may be called: what LLM function-calling APIs accept."""
_GOOGLE_ARG = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_ARG = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?)\s*:\s*$")


class ToolDefinitionError(TypeError):
    """A function cannot be a tool (untyped or unsupported parameters); raised at registration."""


class ToolArgumentsError(ValueError):
    """Arguments a model wrote do not fit the tool's schema; the message is one line."""


def _check_annotation(annotation: Any, where: str) -> None:
    if annotation in _SUPPORTED:
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        if all(isinstance(a, (str, int, float, bool)) for a in args):
            return
    elif origin in (list, tuple, set, frozenset, typing.Union, types.UnionType):
        for arg in args:
            if arg is not Ellipsis:
                _check_annotation(arg, where)
        return
    elif origin is dict and (not args or args[0] is str):
        for arg in args[1:]:
            _check_annotation(arg, where)
        return
    elif annotation is dict or annotation is list:
        return
    raise ToolDefinitionError(
        f"{where}: type {annotation!r} is not supported; use str, int, float, bool, Literal, "
        "list, dict[str, ...] or an optional of these"
    )


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (first paragraph) and per-parameter descriptions of a docstring.

    Parameters come from a Google-style ``Args:`` section (continuation lines indented deeper)
    or from Sphinx ``:param name: text`` lines.
    """
    text = inspect.cleandoc(doc or "")
    if not text:
        return "", {}
    first = re.split(r"\n\s*\n", text)[0]
    description = " ".join(
        line.strip() for line in first.splitlines() if not _SECTION.match(line) and not _SPHINX_ARG.match(line)
    )
    params: dict[str, str] = {}
    in_args = False
    arg_indent: int | None = None
    current: str | None = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        sphinx = _SPHINX_ARG.match(line)
        section = _SECTION.match(line)
        if sphinx:
            current = sphinx.group(1)
            params[current] = sphinx.group(2).strip()
        elif section:
            in_args, arg_indent, current = section.group(1) in ("Args", "Arguments", "Parameters"), None, None
        elif in_args and line.strip():
            google = _GOOGLE_ARG.match(line)
            if google and (arg_indent is None or indent <= arg_indent):
                arg_indent, current = indent, google.group(1)
                params[current] = google.group(2).strip()
            elif current is not None:
                params[current] = (params[current] + " " + line.strip()).strip()
    return description.strip(), params


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class Tool:
    """One callable tool: its function, argument model (the schema), timeout and safety class."""

    name: str
    description: str
    func: ToolFunction
    arguments_model: type[BaseModel]
    timeout_ms: float
    read_only: bool
    """True: no side effects, so it may run speculatively and be cancelled with its reply."""

    @classmethod
    def from_function(
        cls,
        func: ToolFunction,
        *,
        read_only: bool,
        timeout_ms: float = DEFAULT_TOOL_TIMEOUT_MS,
        name: str | None = None,
        description: str | None = None,
    ) -> Tool:
        """A tool from an async function whose parameters are all typed."""
        tool_name = name or func.__name__
        if not inspect.iscoroutinefunction(func):
            raise ToolDefinitionError(f"tool {tool_name!r}: must be an async function (async def)")
        doc_description, doc_params = parse_docstring(func.__doc__)
        try:
            hints = typing.get_type_hints(func)
        except NameError as exc:
            raise ToolDefinitionError(f"tool {tool_name!r}: cannot resolve a type annotation ({exc})") from None
        fields: dict[str, tuple[Any, Any, str]] = {}
        for param in inspect.signature(func).parameters.values():
            where = f"tool {tool_name!r}, parameter {param.name!r}"
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise ToolDefinitionError(f"{where}: only named parameters can come from JSON arguments")
            if param.name not in hints:
                raise ToolDefinitionError(f"{where}: needs a type annotation for the schema")
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints[param.name], default, doc_params.get(param.name, ""))
        return cls.from_fields(
            tool_name,
            func,
            fields,
            read_only=read_only,
            timeout_ms=timeout_ms,
            description=description if description is not None else doc_description,
        )

    @classmethod
    def from_fields(
        cls,
        name: str,
        func: ToolFunction,
        fields: dict[str, tuple[Any, Any, str]],
        *,
        read_only: bool,
        timeout_ms: float = DEFAULT_TOOL_TIMEOUT_MS,
        description: str = "",
    ) -> Tool:
        """A tool from explicit parameters: name -> (type, default or ..., description)."""
        if not TOOL_NAME_PATTERN.fullmatch(name):
            raise ToolDefinitionError(f"tool name {name!r}: use letters, digits, _ . - (at most 64)")
        if timeout_ms <= 0:
            raise ToolDefinitionError(f"tool {name!r}: timeout_ms must be > 0, got {timeout_ms}")
        definitions: dict[str, Any] = {}
        for param, (annotation, default, doc) in fields.items():
            _check_annotation(annotation, f"tool {name!r}, parameter {param!r}")
            definitions[param] = (annotation, Field(default, description=doc or None))
        model = create_model(f"{name}_arguments", __base__=_Arguments, **definitions)
        return cls(name, description, func, model, timeout_ms, read_only)

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments object."""
        schema = _strip_titles(self.arguments_model.model_json_schema())
        schema.setdefault("properties", {})
        schema["additionalProperties"] = False
        return dict(schema)

    def openai_schema(self) -> dict[str, Any]:
        """The tool as an OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: str) -> dict[str, Any]:
        """Keyword arguments for the function, or ToolArgumentsError naming the first problem."""
        try:
            parsed = self.arguments_model.model_validate_json(arguments.strip() or "{}")
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(part) for part in err["loc"]) or "arguments"
            message = "unknown argument" if err["type"] == "extra_forbidden" else err["msg"]
            raise ToolArgumentsError(f"tool {self.name!r}: {where}: {message}") from None
        return {param: getattr(parsed, param) for param in type(parsed).model_fields}

    async def call(self, arguments: dict[str, Any]) -> Any:
        return await self.func(**arguments)


def result_text(value: Any) -> str:
    """A tool's return value as the text the model and the history see."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + " [cut]"
    return text


class ToolRegistry:
    """The tools a session may call. Only registered tools exist; ``allowed`` narrows them further."""

    def __init__(self, tools: Iterable[Tool] = (), allowed: Iterable[str] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)
        self.allowed: frozenset[str] | None = None if allowed is None else frozenset(allowed)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ToolDefinitionError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def register(
        self,
        func: ToolFunction,
        *,
        read_only: bool,
        timeout_ms: float = DEFAULT_TOOL_TIMEOUT_MS,
        name: str | None = None,
    ) -> Tool:
        return self.add(Tool.from_function(func, read_only=read_only, timeout_ms=timeout_ms, name=name))

    def tool(
        self, *, read_only: bool, timeout_ms: float = DEFAULT_TOOL_TIMEOUT_MS, name: str | None = None
    ) -> Callable[[ToolFunction], ToolFunction]:
        """Decorator form of :meth:`register`; returns the function unchanged."""

        def decorate(func: ToolFunction) -> ToolFunction:
            self.register(func, read_only=read_only, timeout_ms=timeout_ms, name=name)
            return func

        return decorate

    def lookup(self, name: str) -> Tool | None:
        """The tool, if it is registered and allowed; None otherwise."""
        if self.allowed is not None and name not in self.allowed:
            return None
        return self._tools.get(name)

    def __iter__(self) -> Iterator[Tool]:
        return (tool for name, tool in sorted(self._tools.items()) if self.lookup(name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The ``tools`` list for an OpenAI-compatible request."""
        return [tool.openai_schema() for tool in self]

    def prompt(self) -> str:
        """System-prompt text that teaches a text-format model (Step-Audio 2) the callable tools."""
        lines = [
            "You can call tools. To call one, first say a short sentence such as 'Let me check that.', "
            'then write exactly: <tool_call>function\\nNAME\\n{"argument": "value"}</tool_call> '
            "and stop. The result comes back as a tool message; then answer from it.",
            "Tools:",
        ]
        lines += [json.dumps(tool.openai_schema()["function"], sort_keys=True) for tool in self]
        return "\n".join(lines)
