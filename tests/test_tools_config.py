"""Tools from a configuration file: what it loads, what it refuses (one line naming file and field), fuzzed."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from duplexer.actors.tool_config import (
    ENTRY_POINT_GROUP,
    MAX_TOOLS_FILE_BYTES,
    ToolConfigError,
    ToolFile,
    load_tools,
    parse_tool_file,
    tool_file_from_mapping,
)
from duplexer.actors.tool_registry import ToolArgumentsError
from duplexer.cli import main
from duplexer.sims.persona import PersonaError, load_persona
from tests.conftest import PHRASES, REPO, fuzz_settings

EXAMPLE = REPO / "examples" / "concierge_tools.yaml"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city's name."}},
    "required": ["city"],
}


def tool(**over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "get_weather",
        "function": "concierge_tools:get_weather",
        "parameters": WEATHER_SCHEMA,
        "timeout_ms": 1000,
        "side_effects": False,
    }
    entry.update(over)
    return {k: v for k, v in entry.items() if v is not None}


def write(tmp_path: Path, data: Any, name: str = "tools.yaml") -> Path:
    """A tools file beside a copy of the example tools module (so its module path imports)."""
    (tmp_path / "concierge_tools.py").write_text((REPO / "examples" / "concierge_tools.py").read_text())
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_the_example_file_loads_its_allowed_tools_and_never_imports_the_others() -> None:
    toolset = load_tools(EXAMPLE)
    assert [t.name for t in toolset.registry] == ["get_weather", "send_message"]
    assert toolset.registry.lookup("hang_up_call") is None  # declared, not allowed: not loaded, not callable
    weather = toolset.registry.lookup("get_weather")
    assert weather is not None and weather.read_only and weather.timeout_ms == 5000
    sender = toolset.registry.lookup("send_message")
    assert sender is not None and not sender.read_only  # side_effects: true waits for commit and playout
    assert weather.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name, e.g. Paris."},
            "unit": {"enum": ["celsius", "fahrenheit"], "type": "string", "default": "celsius"},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert [t["function"]["name"] for t in toolset.openai_tools()] == ["get_weather", "send_message"]
    assert toolset.tool_choice == "auto"


def test_arguments_are_checked_against_the_files_schema_and_the_tool_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    toolset = load_tools(EXAMPLE)
    weather = toolset.registry.lookup("get_weather")
    assert weather is not None
    with pytest.raises(ToolArgumentsError, match="unit"):
        weather.validate('{"city": "Paris", "unit": "kelvin"}')
    with pytest.raises(ToolArgumentsError, match="unknown argument"):
        weather.validate('{"city": "Paris", "country": "FR"}')
    import concierge_tools  # importable by name: it sits beside the tools file

    monkeypatch.setattr(concierge_tools, "WEATHER_DELAY_S", 0.0)
    answer = asyncio.run(weather.call(weather.validate('{"city": "Paris"}')))
    assert answer == {"city": "Paris", "forecast": "sunny", "temperature": 18, "unit": "celsius"}


def test_without_parameters_the_schema_comes_from_the_functions_signature(tmp_path: Path) -> None:
    path = write(tmp_path, {"allow": ["get_weather"], "tools": [tool(parameters=None)]})
    weather = load_tools(path).registry.lookup("get_weather")
    assert weather is not None and weather.description == "Current weather for a city."
    assert weather.parameters["required"] == ["city"] and set(weather.parameters["properties"]) == {"city", "unit"}


def test_a_tool_named_by_entry_point_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"allow": ["get_weather"], "tools": [tool(function=None, entry_point="weather")]})
    monkeypatch.syspath_prepend(str(tmp_path))
    point = importlib.metadata.EntryPoint("weather", "concierge_tools:get_weather", ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points

    def entry_points(**select: Any) -> Any:
        if select.get("group") == ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints([point]).select(**select)
        return real(**select)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert [t.name for t in load_tools(path).registry] == ["get_weather"]


def test_a_persona_names_its_tools_by_file_or_inline(tmp_path: Path) -> None:
    persona = load_persona(REPO / "personas" / "weather_desk.yaml")
    toolset = persona.toolset()
    assert toolset is not None and [t.name for t in toolset.registry] == ["get_weather", "send_message"]
    assert load_persona(REPO / "personas" / "concierge.yaml").toolset() is None
    write(tmp_path, "")
    inline = tmp_path / "p.yaml"
    inline.write_text(
        yaml.safe_dump({"name": "A", "system_prompt": "B", "tools": {"allow": ["get_weather"], "tools": [tool()]}})
    )
    inline_tools = load_persona(inline).toolset()
    assert inline_tools is not None and [t.name for t in inline_tools.registry] == ["get_weather"]
    inline.write_text(yaml.safe_dump({"name": "A", "system_prompt": "B", "tools": {"allow": ["x"], "tools": []}}))
    with pytest.raises(PersonaError, match=r"p\.yaml: tools: allow: .*'x'"):
        load_persona(inline).toolset()


BAD: dict[str, tuple[Any, str]] = {
    "not a mapping": ("- a\n- b\n", "(top level): expected a mapping"),
    "not YAML": ("allow: [a\n", "not valid YAML or JSON"),
    "unknown top-level field": ({"allow": [], "tools": [], "extra": 1}, "extra: unknown field"),
    "no allowlist": ({"tools": [tool()]}, "allow: missing"),
    "allow names an undeclared tool": ({"allow": ["nope"], "tools": []}, "allow: names 'nope'"),
    "a tool declared twice": ({"allow": [], "tools": [tool(), tool()]}, "tools: 'get_weather' is declared twice"),
    "bad tool name": ({"allow": [], "tools": [tool(name="get weather")]}, "tools[0].name"),
    "bad module path": ({"allow": [], "tools": [tool(function="concierge_tools.get_weather")]}, "tools[0].function"),
    "both function and entry point": ({"allow": [], "tools": [tool(entry_point="w")]}, "exactly one of function"),
    "no side_effects": ({"allow": [], "tools": [tool(side_effects=None)]}, "tools[0].side_effects: missing"),
    "zero timeout": ({"allow": [], "tools": [tool(timeout_ms=0)]}, "tools[0].timeout_ms"),
    "NaN timeout": (
        "allow: []\ntools:\n- {name: a, function: 'm:f', timeout_ms: .nan, side_effects: false}\n",
        "timeout_ms",
    ),
    "huge timeout": ({"allow": [], "tools": [tool(timeout_ms=10**40)]}, "tools[0].timeout_ms"),
    "unknown tool field": ({"allow": [], "tools": [tool(retries=3)]}, "tools[0].retries: unknown field"),
    "tool_choice not allowed": ({"allow": [], "tools": [tool()], "tool_choice": "get_weather"}, "tool_choice: "),
    "module that does not import": (
        {"allow": ["get_weather"], "tools": [tool(function="no_such_module_xyz:f")]},
        "tools[0].function: cannot import 'no_such_module_xyz'",
    ),
    "function missing from its module": (
        {"allow": ["get_weather"], "tools": [tool(function="concierge_tools:nope")]},
        "tools[0].function: 'concierge_tools' has no 'nope'",
    ),
    "not an async function": (
        {"allow": ["get_weather"], "tools": [tool(function="json:dumps")]},
        "tools[0]: json:dumps is not an async function",
    ),
    "unknown entry point": (
        {"allow": ["get_weather"], "tools": [tool(function=None, entry_point="no-such-tool")]},
        "tools[0].entry_point: no 'no-such-tool'",
    ),
    "schema type not supported": (
        {"allow": ["get_weather"], "tools": [tool(parameters={"properties": {"city": {"type": "date"}}})]},
        "tools[0].parameters.properties.city.type",
    ),
    "schema keyword not supported": (
        {"allow": ["get_weather"], "tools": [tool(parameters={"properties": {"city": {"pattern": "x"}}})]},
        "tools[0].parameters.properties.city.pattern: not supported",
    ),
    "schema requires an undeclared property": (
        {"allow": ["get_weather"], "tools": [tool(parameters={"properties": {}, "required": ["city"]})]},
        "tools[0].parameters.required",
    ),
    "schema default of the wrong type": (
        {
            "allow": ["get_weather"],
            "tools": [tool(parameters={"properties": {"city": {"type": "integer", "default": "x"}}})],
        },
        "tools[0].parameters.properties.city.default",
    ),
    "schema property the function lacks": (
        {
            "allow": ["get_weather"],
            "tools": [tool(parameters={"properties": {"city": {"type": "string"}, "zip": {"type": "string"}}})],
        },
        "tools[0].parameters.properties.zip: the function has no such parameter",
    ),
    "schema leaves out a parameter the function needs": (
        {"allow": ["get_weather"], "tools": [tool(parameters={"properties": {"unit": {"type": "string"}}})]},
        "tools[0].parameters: the function needs 'city'",
    ),
    "an infinite number in a schema": (
        "allow: []\ntools:\n- {name: a, function: 'm:f', timeout_ms: 5, side_effects: false,\n"
        "   parameters: {properties: {n: {type: number, default: 1.0e+999}}}}\n",
        "tools[0].parameters.properties.n.default must be within",
    ),
    "a huge integer in a schema": (
        {"allow": [], "tools": [tool(parameters={"properties": {"n": {"type": "integer", "enum": [10**40]}}})]},
        "tools[0].parameters.properties.n.enum[0] is out of range",
    ),
    "YAML aliases": ("a: &x [1, 2]\nb: *x\n", "anchors and aliases are not allowed"),
    "nested too deep": ("allow: " + "[" * 40 + "]" * 40 + "\ntools: []\n", "nested more than"),
    "not UTF-8": (b"allow: [\xff]\n", "not UTF-8"),
    "too large": ("# " + "x" * MAX_TOOLS_FILE_BYTES + "\n", "bytes (at most"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_tools_file_is_refused_with_one_line_naming_the_file_and_field(case: str, tmp_path: Path) -> None:
    data, expected = BAD[case]
    path = write(tmp_path, "", "bad.yaml")
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ToolConfigError) as info:
        load_tools(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert expected in message, message


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ToolConfigError, match=r"nowhere\.yaml: cannot read"):
        load_tools(Path("nowhere.yaml"))


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "0"],
        ["mqtt", "--broker", "mqtt://127.0.0.1:1", "--all-devices"],
        ["demo", "--out", "OUT"],
        ["talk", "WAV", "--out", "OUT"],
    ],
)
def test_every_command_with_tools_exits_2_with_one_line_on_a_bad_file(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, {"allow": [], "tools": [tool(timeout_ms=-1)]}, "bad.yaml")
    wav = sorted(PHRASES.glob("*.wav"))[0]
    args = [str(wav) if a == "WAV" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main([*args, "--tools", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "tools[0].timeout_ms" in err, err


# ------------------------------------------------------------------ fuzzing the parser

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["get_weather", "x", "", "a b", "é"]) | st.text(max_size=8),
        "function": st.sampled_from(["m:f", "concierge_tools:get_weather", "a.b:c", ":", ""]) | st.text(max_size=8),
        "entry_point": st.text(max_size=8),
        "parameters": _values,
        "timeout_ms": _scalars,
        "side_effects": _scalars,
        "description": _scalars,
    },
)
_files = st.fixed_dictionaries(
    {},
    optional={
        "allow": st.lists(st.sampled_from(["get_weather", "x"]) | st.text(max_size=6), max_size=3) | _values,
        "tools": st.lists(_entries | _values, max_size=3),
        "tool_choice": st.sampled_from(["auto", "none", "x"]) | _values,
    },
)


@pytest.mark.fuzz
@fuzz_settings()
@given(data=_files)
def test_any_structure_is_parsed_or_refused_with_one_line(data: dict[str, Any]) -> None:
    try:
        parsed = tool_file_from_mapping(data, "f.yaml")
    except ToolConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.yaml: ")
    else:
        assert isinstance(parsed, ToolFile) and set(parsed.allow) <= {t.name for t in parsed.tools}


@pytest.mark.fuzz
@fuzz_settings()
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_text_is_parsed_or_refused_with_one_line(text: str) -> None:
    for data in (text, "allow: []\ntools:\n" + text, json.dumps({"allow": [], "tools": [text]})):
        try:
            parse_tool_file(data, "f.yaml")
        except ToolConfigError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("f.yaml: ")
