"""Scenario files can script tool calls; malformed tool replies are refused naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplexer.sims.scenario import ScenarioError, ToolReply, collect_scenarios, load_scenario, tool_replies
from tests.conftest import SCENARIOS

TOOL_REPLY = "name: x\nscript:\n  - say: weather please\n    reply:\n"


def test_shipped_tool_scenarios_cover_a_hidden_lookup_and_a_prevented_side_effect() -> None:
    tool_scenarios = {sc.name: sc for _, sc in collect_scenarios([SCENARIOS]) if tool_replies(sc)}
    weather = tool_replies(tool_scenarios["tool_weather_behind_preface"])[0][1]
    assert weather.preface and weather.tool.latency_ms == 2000 and not weather.tool.side_effect
    hang_up = tool_replies(tool_scenarios["tool_hang_up_barge_in"])[0][1]
    assert hang_up.tool.side_effect
    assert len(tool_scenarios) >= 2


def test_a_text_reply_stays_text_and_a_mapping_is_a_tool_reply(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "name: x\nscript:\n  - say: hi\n    reply: Hello there.\n  - say: weather please\n    reply:\n"
        "      preface: One moment please.\n      call: {name: get_weather, args: {city: Oslo}}\n"
        "      tool: {latency_ms: 1500, result: {temp_c: 3}}\n      then: It is cold.\n"
    )
    scenario = load_scenario(path)
    assert scenario.script[0].reply == "Hello there."  # type: ignore[union-attr]
    [(index, reply)] = tool_replies(scenario)
    assert index == 1 and isinstance(reply, ToolReply)
    assert reply.call.args == {"city": "Oslo"} and reply.call.format == "step_audio"


BAD = {
    "unknown reply field": (
        TOOL_REPLY + "      prefix: hi\n      call: {name: f}\n",
        "script[0].reply.prefix: unknown",
    ),
    "call without a name": (TOOL_REPLY + "      call: {args: {}}\n", "script[0].reply.call.name: Field required"),
    "unknown call format": (TOOL_REPLY + "      call: {name: f, format: xml}\n", "script[0].reply.call.format"),
    "negative tool latency": (
        TOOL_REPLY + "      call: {name: f}\n      tool: {latency_ms: -5}\n",
        "script[0].reply.tool.latency_ms",
    ),
    "unknown JSON type": (
        TOOL_REPLY + "      call: {name: f}\n      tool: {params: {x: decimal}}\n",
        "script[0].reply.tool.params.x",
    ),
    "a tool registered two ways": (
        TOOL_REPLY
        + "      call: {name: f}\n      tool: {side_effect: true}\n"
        + "  - say: again\n    reply:\n      call: {name: f}\n      tool: {side_effect: false}\n",
        "script[1].reply.tool.side_effect",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_tool_reply_gets_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert expected in message, message
