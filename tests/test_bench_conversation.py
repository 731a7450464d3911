"""`duplexer bench conversation`: recorded turns through the live pipeline, scored from the audio.

The fast tests replay real VAP clips against scripted engines on the virtual clock (the TTS speaks
real voiced audio, so the scorer hears the bot); the slow one runs the real models on two turns.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from duplexer.actors.energy_vad import EnergyVad
from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.pipeline import PipelineConfig
from duplexer.actors.scripted import CannedAsr, ScriptedLlm, ScriptedTts
from duplexer.bench.conversation import report, stage_rows, table_rows
from duplexer.bench.conversation_input import (
    VAP_PHRASES_DIR,
    folder_conversation,
    limited,
    scenario_of,
    vap_conversation,
)
from duplexer.bench.conversation_score import STAGE_EVENTS, STAGES, repeated_replies
from duplexer.cli import main
from duplexer.runtime.clock import Clock, run_virtual
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
from duplexer.sims.live import LiveRun, run_live, without_speculation
from tests.conftest import voiced

REPLY = "A short answer to that one."
"""About 1.8 s of scripted speech: over by the next turn, still playing 1 s after it began."""


class VoicedTts(ScriptedTts):
    """The scripted TTS's timing with audible speech in it, so the bot is heard in the recording."""

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        offset = 0
        async for pcm in super().synthesize(text, reply_id, instructions):
            n = len(pcm) // 2
            yield (voiced()[offset : offset + n] * 16000).astype("<i2").tobytes()
            offset += n


def _engines(clock: Clock, sink: AudioSink) -> Engines:
    rng = random.Random(0)
    llm = ScriptedLlm(clock, rng, reply_for=lambda _: REPLY)
    return Engines(EnergyVad(), CannedAsr(clock, default="a question"), llm, VoicedTts(clock, rng), sink)


@pytest.fixture(scope="module")
def scored() -> dict:
    """Voice E's first three turns (short, long with its pause, an interrupting short), speculation
    on and off. Each run gets its own virtual loop: a second session on one virtual loop starts at a
    clock origin whose float rounding can stall the virtual clock."""
    conversation = limited(vap_conversation(VAP_PHRASES_DIR, "E", interrupt_every=1), 3)
    scenario, clips = scenario_of(conversation, gap_ms=3000.0)
    runs: dict[str, list] = {}
    for mode, config in (("on", PipelineConfig()), ("off", without_speculation(PipelineConfig()))):
        live = run_virtual(run_live(scenario, clips, _engines, config, extra_events=STAGE_EVENTS))
        assert isinstance(live, LiveRun)
        runs[mode] = [(conversation, live)]
    return report(runs)


def test_vap_conversation_orders_phrases_and_puts_a_pause_into_long_forms() -> None:
    conversation = vap_conversation(VAP_PHRASES_DIR, "F")
    assert len(conversation.turns) == 18
    assert [t.form for t in conversation.turns[:4]] == ["short", "long", "short", "long"]
    assert all(t.pause_ms is not None for t in conversation.turns if t.form == "long")
    assert [t.name.split("_")[0] for t in conversation.turns if t.interrupts] == ["drive", "live", "work"]
    basketball_short, basketball_long = conversation.turns[:2]
    start, end = basketball_long.pause_ms or (0.0, 0.0)
    assert end - start >= 500.0 and start > 0.8 * basketball_short.duration_ms
    plain = vap_conversation(VAP_PHRASES_DIR, "F", pause_ms=0.0)
    assert plain.turns[1].duration_ms < basketball_long.duration_ms - 450.0


def test_a_folder_is_one_conversation_in_name_order(tmp_path: Path) -> None:
    for i, name in enumerate(("b.wav", "a.wav", "c.wav")):
        shutil.copy(VAP_PHRASES_DIR / "audio" / f"bike_short_female_en-US-Wavenet-{'EF'[i % 2]}.wav", tmp_path / name)
    conversation = folder_conversation(tmp_path, interrupt_every=2)
    assert [t.name for t in conversation.turns] == ["a", "b", "c"]
    assert [t.interrupts for t in conversation.turns] == [False, True, False]


def test_every_turn_is_scored_from_audio_with_its_stage_breakdown(scored: dict) -> None:
    on = [r for r in scored["turns"] if r["speculation"]]
    off = [r for r in scored["turns"] if not r["speculation"]]
    assert [r["form"] for r in on] == ["short", "long", "short"] and len(off) == 3
    assert all(r["heard"] for r in on + off)
    first = on[0]
    assert first["response_latency_ms"] is not None and first["reply_speculative"]
    stages = first["stages_ms"]
    assert list(stages) == list(STAGES)
    # the chain runs in order, and the last stage is the audible onset the latency is measured to
    chain = [stages[s] for s in ("vad_stop", "asr_final", "first_llm_token", "first_tts_chunk", "playout_start")]
    assert chain == sorted(chain) and chain[0] > 0.0
    assert stages["audible"] == first["response_latency_ms"] >= stages["playout_start"]
    assert off[0]["stages_ms"]["speculative_start"] is None
    assert first["latency_saved_ms"] == pytest.approx(off[0]["response_latency_ms"] - first["response_latency_ms"])
    long = on[1]
    assert long["mid_turn_pause_ms"] is not None
    assert long["user_start_ms"] < long["mid_turn_pause_ms"][0] < long["mid_turn_pause_ms"][1] < long["user_end_ms"]
    barge = on[2]
    assert barge["interrupts"] and barge["bot_speaking_at_onset"] and barge["barge_in_stop_ms"] > 0.0


def test_the_summary_counts_speculation_and_repeated_replies(scored: dict) -> None:
    summary = scored["summary"]
    assert set(summary) == {"E on", "ALL on", "E off", "ALL off"}
    on, off = summary["ALL on"], summary["ALL off"]
    assert on["speculation"]["started"] >= 1 and on["speculation"]["committed"] >= 1
    assert off["speculation"]["started"] == 0
    # the scripted model says the same thing every time: each whole reply after the first repeats it
    # (the reply cut off by the barge-in enters the history as far as it was heard, a new text)
    whole = [p["bot"] for p in scored["exchanges"]["E"] if p["bot"] == REPLY]
    assert len(whole) >= 2 and on["repeated_replies"] == len(whole) - 1
    assert on["distinct_replies"] == on["replies"] - on["repeated_replies"]
    assert on["barge_ins"] == "1/1" and on["barge_in_stop_ms"]["p50"] is not None
    plain = [r["response_latency_ms"] for r in scored["turns"] if r["speculation"] and not r["interrupts"]]
    # the breakdown's last stage is the audible onset: its p50 is the latency p50 of the same turns
    assert on["stages_p50_ms"]["audible"] == pytest.approx(float(np.median(plain)), abs=0.1)
    assert scored["exchanges"]["E"][0] == {"user": "a question", "bot": REPLY}
    rows = table_rows(summary)
    assert [r[0] for r in rows] == list(summary) and len(stage_rows(summary)) == 2
    json.dumps(scored)  # the JSON written out holds every row


def test_repeated_replies_count_word_for_word_repeats_only() -> None:
    assert repeated_replies(["Hi.", "Hello.", "Hi.", "Hi.", "hi."]) == 2


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--voices", "Z"], "voice 'Z'"),
        (["--folder", "/nonexistent/folder"], "not a folder"),
        (["--interrupt-every", "-1"], "--interrupt-every"),
        (["--policy", "nosuch"], "--policy"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "conversation", "--no-log", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error:") and "\n" not in err and needle in err


@pytest.mark.slow
def test_the_bench_runs_the_real_models_on_two_turns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["bench", "conversation", "--voices", "E", "--limit", "2", "--no-log", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "conversation.json").read_text())
    assert {"turns", "summary", "exchanges", "options", "elapsed_s"} <= set(result)
    assert len(result["turns"]) == 4 and set(result["summary"]) == {"E on", "ALL on", "E off", "ALL off"}
    for row in result["turns"]:
        assert row["heard"] and row["form"] in ("short", "long")
        if row["response_latency_ms"] is not None:
            assert list(row["stages_ms"]) == list(STAGES)
    for name in ("E_spec_on.wav", "E_spec_off.wav"):
        assert (out / name).stat().st_size > 2 * 2 * INPUT_SAMPLE_RATE_HZ  # stereo, over a second


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "soon"])
def test_a_gap_that_is_no_finite_non_negative_number_exits_2_naming_the_option(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "conversation", "--no-log", "--gap-ms", value])
    assert exit_info.value.code == 2
    assert "argument --gap-ms" in capsys.readouterr().err
