"""The tool registry: schemas come from signatures and docstrings; arguments are checked before a call."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import pytest

from duplexer.actors.tool_registry import (
    MAX_RESULT_CHARS,
    Tool,
    ToolArgumentsError,
    ToolDefinitionError,
    ToolRegistry,
    parse_docstring,
    result_text,
)


async def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: int = 1) -> dict[str, Any]:
    """Current weather for a city.

    The forecast service answers slowly.

    Args:
        city: The city's name,
            for example Paris.
        unit: Temperature unit.
    """
    return {"city": city, "unit": unit, "days": days}


async def send_message(to: str, text: str, urgent: bool = False, tags: list[str] | None = None) -> str:
    """Send a text message.

    :param to: the contact's name
    :param text: what to say
    """
    return "sent"


def test_schema_comes_from_the_signature_and_the_docstring() -> None:
    tool = Tool.from_function(get_weather, read_only=True)
    assert tool.description == "Current weather for a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name, for example Paris."},
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "default": "celsius",
                "description": "Temperature unit.",
            },
            "days": {"type": "integer", "default": 1},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert tool.openai_schema()["function"]["name"] == "get_weather"


def test_sphinx_docstrings_optionals_and_lists_are_understood() -> None:
    schema = Tool.from_function(send_message, read_only=False).parameters
    assert schema["required"] == ["to", "text"]
    assert schema["properties"]["to"]["description"] == "the contact's name"
    assert schema["properties"]["urgent"] == {"type": "boolean", "default": False}
    assert {"type": "array", "items": {"type": "string"}} in schema["properties"]["tags"]["anyOf"]


def test_docstring_without_sections_is_all_description() -> None:
    assert parse_docstring("Hang up.\n\nMore detail.") == ("Hang up.", {})
    assert parse_docstring(None) == ("", {})


def test_arguments_that_fit_become_keyword_arguments_with_defaults() -> None:
    tool = Tool.from_function(get_weather, read_only=True)
    assert tool.validate('{"city": "Paris"}') == {"city": "Paris", "unit": "celsius", "days": 1}
    assert asyncio.run(tool.call(tool.validate('{"city": "Oslo", "days": 3}')))["days"] == 3


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ('{"city": 42}', "city: Input should be a valid string"),
        ('{"city": "Paris", "days": "3"}', "days: Input should be a valid integer"),  # strict: no coercion
        ('{"city": "Paris", "unit": "kelvin"}', "unit: Input should be 'celsius' or 'fahrenheit'"),
        ('{"town": "Paris"}', "city: Field required"),
        ('{"city": "Paris", "country": "FR"}', "country: unknown argument"),
        ('["Paris"]', "arguments"),
        ('{"city": Paris}', "Invalid JSON"),
        ("", "city: Field required"),
    ],
)
def test_arguments_that_fail_the_schema_are_refused_in_one_line(arguments: str, problem: str) -> None:
    tool = Tool.from_function(get_weather, read_only=True)
    with pytest.raises(ToolArgumentsError) as info:
        tool.validate(arguments)
    assert problem in str(info.value)
    assert str(info.value).startswith("tool 'get_weather': ") and "\n" not in str(info.value)


def test_functions_that_cannot_be_tools_are_refused_at_registration() -> None:
    async def untyped(city):  # type: ignore[no-untyped-def]
        return city

    async def splat(*cities: str) -> str:
        return ""

    def not_async(city: str) -> str:
        return city

    async def odd_type(when: complex) -> str:
        return ""

    for func, problem in [
        (untyped, "needs a type annotation"),
        (splat, "only named parameters"),
        (not_async, "must be an async function"),
        (odd_type, "is not supported"),
    ]:
        with pytest.raises(ToolDefinitionError, match=problem):
            Tool.from_function(func, read_only=True)  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError, match="timeout_ms"):
        Tool.from_function(get_weather, read_only=True, timeout_ms=0)


def test_only_registered_and_allowed_tools_can_be_looked_up() -> None:
    registry = ToolRegistry()
    registry.register(get_weather, read_only=True)
    registry.register(send_message, read_only=False, timeout_ms=3000)
    assert registry.lookup("get_weather") is not None
    assert registry.lookup("delete_everything") is None
    with pytest.raises(ToolDefinitionError, match="already registered"):
        registry.register(get_weather, read_only=True)

    narrowed = ToolRegistry(registry, allowed={"get_weather"})
    assert narrowed.lookup("send_message") is None
    assert [tool.name for tool in narrowed] == ["get_weather"]
    assert "send_message" not in narrowed.prompt()
    assert [t["function"]["name"] for t in narrowed.openai_tools()] == ["get_weather"]


def test_decorator_registers_with_timeout_and_safety_class() -> None:
    registry = ToolRegistry()

    @registry.tool(read_only=False, timeout_ms=1500)
    async def hang_up_call() -> str:
        """End the call."""
        return "ended"

    tool = registry.lookup("hang_up_call")
    assert tool is not None and not tool.read_only and tool.timeout_ms == 1500
    assert tool.parameters == {"type": "object", "properties": {}, "additionalProperties": False}


def test_results_become_compact_text() -> None:
    assert result_text("sunny") == "sunny"
    assert result_text({"b": 1, "a": "é"}) == '{"a": "é", "b": 1}'
    long = result_text("x" * (MAX_RESULT_CHARS + 50))
    assert len(long) < MAX_RESULT_CHARS + 10 and long.endswith("[cut]")
