"""Example tools for a voice assistant: a slow weather API and two side-effecting call controls.

``get_weather`` waits ``weather_delay_s`` to stand in for a slow API, and is read-only, so it
may run speculatively while the bot is still saying "Let me check that". ``hang_up_call`` and
``send_message`` change the world, so the session runs them only after the reply that
announced them was played to the end without the user interrupting.

Run ``python examples/tools.py`` to see the schemas the model is given.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Literal

from duplexer.actors.tool_registry import ToolRegistry

WEATHER = {
    "paris": ("sunny", 18),
    "london": ("light rain", 12),
    "tokyo": ("cloudy", 22),
}
"""The fake weather service's answers, by lower-case city name."""


@dataclass
class LiveCall:
    """The state the side-effecting tools act on: the phone call and the messages sent."""

    hung_up: bool = False
    messages: list[tuple[str, str]] = field(default_factory=list)


def build_registry(weather_delay_s: float = 2.0, call: LiveCall | None = None) -> ToolRegistry:
    """The example tools, acting on ``call``; get_weather answers after ``weather_delay_s``."""
    registry = ToolRegistry()
    live_call = call if call is not None else LiveCall()

    @registry.tool(read_only=True, timeout_ms=5000.0)
    async def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict[str, object]:
        """Current weather for a city.

        Args:
            city: The city's name, e.g. "Paris".
            unit: The temperature unit to answer in.
        """
        await asyncio.sleep(weather_delay_s)
        forecast, temp_c = WEATHER.get(city.strip().lower(), ("unknown", 15))
        temperature = temp_c if unit == "celsius" else round(temp_c * 9 / 5 + 32)
        return {"city": city, "forecast": forecast, "temperature": temperature, "unit": unit}

    @registry.tool(read_only=False, timeout_ms=2000.0)
    async def hang_up_call(reason: str = "") -> str:
        """End the phone call. Only when the caller asks to hang up.

        Args:
            reason: Why the call ends, for the call log.
        """
        live_call.hung_up = True
        return "the call has ended"

    @registry.tool(read_only=False, timeout_ms=5000.0)
    async def send_message(to: str, text: str) -> str:
        """Send a text message to one of the caller's contacts.

        Args:
            to: The contact's name.
            text: The message, as the caller dictated it.
        """
        live_call.messages.append((to, text))
        return f"message sent to {to}"

    return registry


def main() -> None:
    registry = build_registry()
    print(json.dumps(registry.openai_tools(), indent=2))
    print()
    print(registry.prompt())


if __name__ == "__main__":
    main()
