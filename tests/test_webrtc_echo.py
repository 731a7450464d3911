"""`serve --aec server`: a call's microphone goes through the server's echo canceller, with what the server
sent as the reference; off by default, since browsers cancel their own echo."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest

from duplexer.cli import main as cli_main
from duplexer.protocols.webrtc_client import WebRtcCaller
from duplexer.runtime.logging import configure_logging
from tests.conftest import run
from tests.serve_http import QUESTION, serving, speech

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> Iterator[None]:
    yield
    configure_logging(stream=sys.__stderr__)


@pytest.mark.parametrize("server_aec", [True, False])
def test_a_call_is_cancelled_on_the_server_only_with_aec_server(server_aec: bool) -> None:
    pcm, rate = speech()

    async def scenario() -> tuple[dict[str, object], list[dict[str, object]]]:
        async with serving(server_aec=server_aec) as server:
            caller = WebRtcCaller(server.url)
            session_id = await caller.connect()
            await caller.mic.say(pcm, rate)
            await caller.wait_for(lambda m: m["type"] == "history" and m["role"] == "assistant", 20)
            await asyncio.sleep(0.3)
            summary = server.calls[session_id].summary()
            await caller.close()
        return summary, caller.messages

    summary, messages = run(scenario())
    echo = summary["echo"]
    assert isinstance(echo, dict)
    finals = [m["text"] for m in messages if m["type"] == "transcript" and m["final"]]
    assert finals == [QUESTION]  # the user is heard either way
    if server_aec:
        assert echo["mode"] == "server" and echo["degraded"] is None
        assert echo["passed_through"] == 0 and echo["cancelled"] + echo["learning"] > 50  # while the bot spoke
        # This caller's microphone does not hear the bot: no echo is found, so its audio passes as it came.
        assert echo["locked"] is False and echo["cancelled"] == 0
    else:
        assert echo == {"mode": "device"}


def test_serve_refuses_an_unknown_aec_choice_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli_main(["serve", "--aec", "browser"])
    assert stopped.value.code == 2 and "--aec" in capsys.readouterr().err
