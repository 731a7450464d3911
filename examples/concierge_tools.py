"""Tools a concierge persona loads from configuration (examples/concierge_tools.yaml).

Plain module-level async functions: the tools file names them by module path
(``concierge_tools:get_weather``) and states each one's schema, timeout and side effects, so
the same functions serve ``duplexer demo --tools``, ``talk``, ``serve`` and ``mqtt``.
``get_weather`` is read-only (it may run speculatively); ``send_message`` and ``hang_up_call``
change the world, so a session runs them only after the reply that announced them was played.
"""

from __future__ import annotations

import asyncio

WEATHER = {
    "paris": ("sunny", 18),
    "london": ("light rain", 12),
    "tokyo": ("cloudy", 22),
}
"""The stand-in weather service's answers, by lower-case city name."""

SENT: list[tuple[str, str]] = []
"""Messages ``send_message`` has sent, in order (the side effect a test can look at)."""
CALLS_ENDED: list[str] = []
"""Reasons ``hang_up_call`` was given, in order."""
WEATHER_DELAY_S = 0.3
"""How long the stand-in weather service takes to answer."""


async def get_weather(city: str, unit: str = "celsius") -> dict[str, object]:
    """Current weather for a city."""
    await asyncio.sleep(WEATHER_DELAY_S)
    forecast, temp_c = WEATHER.get(city.strip().lower(), ("unknown", 15))
    temperature = temp_c if unit == "celsius" else round(temp_c * 9 / 5 + 32)
    return {"city": city, "forecast": forecast, "temperature": temperature, "unit": unit}


async def send_message(to: str, text: str) -> str:
    """Send a text message to one of the caller's contacts."""
    SENT.append((to, text))
    return f"message sent to {to}"


async def hang_up_call(reason: str = "") -> str:
    """End the phone call."""
    CALLS_ENDED.append(reason)
    return "the call has ended"
