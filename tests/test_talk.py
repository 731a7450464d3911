"""`duplexer talk FILE.wav` with scripted engines: the whole recording is heard, every reply is played
to its end, and a two-party recording can give the user one channel."""

from __future__ import annotations

import json
import random
import wave
from pathlib import Path

import numpy as np
import pytest

from duplexer.actors.energy_vad import EnergyVad
from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.pipeline import PipelineConfig
from duplexer.actors.scripted import CannedAsr, ScriptedLlm, ScriptedTts
from duplexer.cli import main
from duplexer.protocols.wav import WavError, read_wav, write_wav
from duplexer.runtime.clock import Clock, run_virtual
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ, ErrorEvent, PlayoutDone, PlayoutStopped
from duplexer.sims.demo import recording_scenario
from duplexer.sims.live import LiveRun, run_live
from tests.conftest import voiced

LONG_REPLY = " ".join(["this reply goes on well past the end of the recording"] * 4)
"""About 13 s of scripted speech: still playing when a 2.5 s recording has ended."""


def _recording(silence_before_s: float, speech_s: float, silence_after_s: float) -> bytes:
    rate = INPUT_SAMPLE_RATE_HZ
    speech = voiced(rate)[: int(speech_s * rate)] * 32767
    samples = np.concatenate([np.zeros(int(silence_before_s * rate)), speech, np.zeros(int(silence_after_s * rate))])
    return samples.astype("<i2").tobytes()


def _engines(clock: Clock, sink: AudioSink) -> Engines:
    rng = random.Random(0)
    llm = ScriptedLlm(clock, rng, reply_for=lambda _: LONG_REPLY)
    return Engines(EnergyVad(), CannedAsr(clock, default="tell me a long story"), llm, ScriptedTts(clock, rng), sink)


def _talk(pcm: bytes, quiet_wait_ms: float | None = None) -> LiveRun:
    scenario, clips = recording_scenario(pcm, "rec")
    extra = {} if quiet_wait_ms is None else {"quiet_wait_ms": quiet_wait_ms}
    result = run_virtual(run_live(scenario, clips, _engines, PipelineConfig(), recording=pcm, **extra))
    assert isinstance(result, LiveRun)
    return result


def test_a_reply_in_progress_when_the_recording_ends_is_played_to_its_end() -> None:
    pcm = _recording(0.5, 1.0, 1.0)
    input_ms = 1000.0 * len(pcm) / 2 / INPUT_SAMPLE_RATE_HZ
    live = _talk(pcm)
    run = live.run
    [reply] = {i.reply_id for i in run.bot_audio}
    assert run.bot_audio[0].start_ms < input_ms < run.bot_audio[-1].end_ms  # it was talking as the input ended
    assert [e.reply_id for e in run.events if isinstance(e, PlayoutDone)] == [reply]
    assert not [e for e in run.events if isinstance(e, PlayoutStopped)]
    assert run.bot_audio[-1].end_ms - run.bot_audio[0].start_ms > 10_000  # all ~13 s of it
    assert run.duration_ms >= run.bot_audio[-1].end_ms
    assert not [e for e in run.events if isinstance(e, ErrorEvent)]


def test_the_session_lasts_the_whole_recording_and_writes_all_of_it() -> None:
    pcm = _recording(0.5, 0.3, 8.0)  # a short question, then long trailing silence
    live = _talk(pcm)
    assert live.run.duration_ms >= 1000.0 * len(pcm) / 2 / INPUT_SAMPLE_RATE_HZ
    assert live.user_track.tobytes() == pcm  # streamed verbatim, trailing silence included


def test_a_bot_that_never_goes_quiet_ends_the_run_with_an_error() -> None:
    live = _talk(_recording(0.5, 1.0, 0.5), quiet_wait_ms=2000.0)
    errors = [e.message for e in live.run.events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "still replying 2 s after the input ended" in errors[0]
    assert live.run.duration_ms < 1000.0 * 2.0 + 2000.0 + 1000.0


def _stereo(path: Path, left: np.ndarray, right: np.ndarray) -> None:
    out = np.stack([left, right], axis=1).astype("<i2")
    write_wav(path, out.tobytes(), INPUT_SAMPLE_RATE_HZ, channels=2)


def test_one_channel_of_a_two_party_recording_is_taken_alone(tmp_path: Path) -> None:
    left = np.full(1600, 1000, dtype="<i2")
    right = np.full(1600, -3000, dtype="<i2")
    path = tmp_path / "call.wav"
    _stereo(path, left, right)
    assert np.array_equal(np.frombuffer(read_wav(path, INPUT_SAMPLE_RATE_HZ, "left"), "<i2"), left)
    assert np.array_equal(np.frombuffer(read_wav(path, INPUT_SAMPLE_RATE_HZ, "right"), "<i2"), right)
    mixed = np.frombuffer(read_wav(path, INPUT_SAMPLE_RATE_HZ), "<i2")
    assert abs(int(mixed[0]) - (-1000)) <= 1  # the default still mixes


def test_a_channel_of_a_mono_recording_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    write_wav(path, bytes(3200), INPUT_SAMPLE_RATE_HZ)
    with pytest.raises(WavError, match=r"mono\.wav: has 1 channel"):
        read_wav(path, INPUT_SAMPLE_RATE_HZ, "right")


def test_talk_with_a_user_channel_of_a_mono_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mono.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(INPUT_SAMPLE_RATE_HZ)
        w.writeframes(bytes(3200))
    assert main(["talk", str(path), "--user-channel", "left", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error:") and "\n" not in err and "mono.wav" in err and "left" in err


def test_talk_with_the_microphone_refuses_a_user_channel(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["talk", "--mic", "--user-channel", "right"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplexer: error: --user-channel") and "\n" not in err


def test_talk_streams_the_chosen_channel_whole_and_writes_it_as_the_user_track(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from duplexer.sims import demo_cli

    def short_replies(clock: Clock, sink: AudioSink) -> Engines:
        rng = random.Random(0)
        llm = ScriptedLlm(clock, rng, reply_for=lambda _: "Sure.")
        return Engines(EnergyVad(), CannedAsr(clock), llm, ScriptedTts(clock, rng), sink)

    monkeypatch.setattr(demo_cli, "demo_engines", lambda args: (short_replies, None))
    user = np.frombuffer(_recording(0.3, 0.6, 0.9), "<i2")
    partner = (np.random.default_rng(1).standard_normal(len(user)) * 2000).astype("<i2")
    path = tmp_path / "call.wav"
    _stereo(path, partner, user)
    assert main(["talk", str(path), "--user-channel", "right", "--out", str(tmp_path / "o")]) == 0
    with wave.open(str(tmp_path / "o" / "call.wav"), "rb") as w:
        written = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert len(written) >= len(user)
    assert np.array_equal(written[: len(user), 0], user)  # the user's side alone, to its last sample
    [turn] = json.loads((tmp_path / "o" / "call.json").read_text())["turns"]
    assert turn["bot_reply"] == "Sure."  # the bot answered, and the session ran past the recording
    assert len(written) > len(user)


def test_talk_names_its_outputs_by_a_short_file_safe_form_of_any_input_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 250-character name with spaces is a valid file; its outputs (NAME_timeline.png) would not be."""
    from duplexer.sims import demo_cli

    def short_replies(clock: Clock, sink: AudioSink) -> Engines:
        rng = random.Random(0)
        return Engines(
            EnergyVad(),
            CannedAsr(clock),
            ScriptedLlm(clock, rng, reply_for=lambda _: "Sure."),
            ScriptedTts(clock, rng),
            sink,
        )

    monkeypatch.setattr(demo_cli, "demo_engines", lambda args: (short_replies, None))
    path = tmp_path / ("my call " + "x" * 242 + ".wav")
    write_wav(path, _recording(0.3, 0.6, 0.5), INPUT_SAMPLE_RATE_HZ)
    assert main(["talk", str(path), "--out", str(tmp_path / "o")]) == 0
    stem = "my_call_" + "x" * 56
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"{stem}.json", f"{stem}.wav", f"{stem}_timeline.png"]
