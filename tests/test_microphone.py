"""Live talk through PyAudio, tested with a fake PyAudio (this machine has no sound device)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from duplexer.protocols import microphone
from duplexer.protocols.microphone import (
    NO_INPUT_DEVICE,
    MicrophoneInput,
    MicrophoneUnavailable,
    SpeakerOutput,
    open_devices,
)
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ
from tests.conftest import SHARED

PHRASES = SHARED / "data" / "vap_phrases" / "audio"


class FakeInputStream:
    """Calls PyAudio's stream callback from its own thread with ``chunk`` samples at a time, in real time."""

    def __init__(self, pcm: bytes, callback: Any, chunk: int) -> None:
        self.pcm, self.callback, self.chunk = pcm, callback, chunk
        self.running = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.closed = False

    def _run(self) -> None:
        step = 2 * self.chunk
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(self.pcm), step)):
            if not self.running.is_set():
                return
            data = self.pcm[offset : offset + step].ljust(step, b"\0")
            self.callback(data, self.chunk, {}, 0)
            time.sleep(max(0.0, start + (n + 1) * self.chunk / INPUT_SAMPLE_RATE_HZ - time.monotonic()))

    def start_stream(self) -> None:
        self.running.set()
        self.thread.start()

    def stop_stream(self) -> None:
        self.running.clear()

    def close(self) -> None:
        self.closed = True


class FakeOutputStream:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.written: list[bytes] = []
        self.closed = False

    def write(self, pcm: bytes) -> None:
        self.written.append(pcm)

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakePyAudio:
    """Stands in for ``pyaudio.PyAudio``: a microphone that says ``mic_pcm``, then silence."""

    def __init__(self, mic_pcm: bytes = b"", has_input: bool = True, has_output: bool = True, chunk: int = 0) -> None:
        self.mic_pcm, self.has_input, self.has_output = mic_pcm, has_input, has_output
        self.chunk = chunk
        self.inputs: list[FakeInputStream] = []
        self.outputs: list[FakeOutputStream] = []
        self.terminated = False

    def get_default_input_device_info(self) -> dict[str, Any]:
        if not self.has_input:
            raise OSError(-9996, "No Default Input Device Available")
        return {"name": "fake microphone", "defaultSampleRate": 16000.0}

    def get_default_output_device_info(self) -> dict[str, Any]:
        if not self.has_output:
            raise OSError(-9996, "No Default Output Device Available")
        return {"name": "fake speaker"}

    def open(
        self, *, format: int, channels: int, rate: int, input: bool = False, output: bool = False, **kw: Any
    ) -> Any:
        assert format == FAKE_PA.paInt16 and channels == 1
        if input:
            assert rate == INPUT_SAMPLE_RATE_HZ
            stream: Any = FakeInputStream(self.mic_pcm, kw["stream_callback"], self.chunk or kw["frames_per_buffer"])
            self.inputs.append(stream)
        else:
            assert output
            stream = FakeOutputStream(rate)
            self.outputs.append(stream)
        return stream

    def terminate(self) -> None:
        self.terminated = True


FAKE_PA = SimpleNamespace(paInt16=8, paContinue=0, PyAudio=FakePyAudio)


def fake_pyaudio_module(**kwargs: Any) -> tuple[SimpleNamespace, list[FakePyAudio]]:
    made: list[FakePyAudio] = []

    def make() -> FakePyAudio:
        made.append(FakePyAudio(**kwargs))
        return made[-1]

    return SimpleNamespace(paInt16=FAKE_PA.paInt16, paContinue=FAKE_PA.paContinue, PyAudio=make), made


def test_no_input_device_is_a_clear_error_and_releases_pyaudio() -> None:
    module, made = fake_pyaudio_module(has_input=False)
    with pytest.raises(MicrophoneUnavailable, match="no audio input device"):
        open_devices(module)
    assert made[0].terminated


def test_talk_mic_without_pyaudio_or_device_exits_2_with_one_line(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from duplexer.cli import main

    def no_pyaudio() -> Any:
        raise MicrophoneUnavailable("--mic needs PyAudio: pip install 'duplexer[mic]'")

    monkeypatch.setattr(microphone, "load_pyaudio", no_pyaudio)
    assert main(["talk", "--mic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["duplexer: error: --mic needs PyAudio: pip install 'duplexer[mic]'"]

    module, _ = fake_pyaudio_module(has_input=False)
    monkeypatch.setattr(microphone, "load_pyaudio", lambda: module)
    assert main(["talk", "--mic"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"duplexer: error: {NO_INPUT_DEVICE}"]


def test_microphone_buffers_of_any_size_become_whole_frames() -> None:
    pcm = np.arange(7 * FRAME_SAMPLES, dtype="<i2").tobytes()
    module, _ = fake_pyaudio_module(mic_pcm=pcm, chunk=FRAME_SAMPLES * 3 // 2 + 7)
    devices = open_devices(module)

    async def collect() -> list[bytes]:
        mic = MicrophoneInput(devices)
        mic.start()
        frames: list[bytes] = []
        async for frame in mic.frames():
            frames.append(frame)
            if len(frames) == 7:
                mic.close()
        return frames

    frames = asyncio.run(asyncio.wait_for(collect(), timeout=10))
    assert all(len(f) == 2 * FRAME_SAMPLES for f in frames)
    assert b"".join(frames) == pcm


def test_speaker_plays_in_order_and_flush_drops_the_queue() -> None:
    module, made = fake_pyaudio_module()
    speaker = SpeakerOutput(open_devices(module))
    speaker.write(b"\1\0" * 10, 16000, "r1", 0.0)
    speaker.close()
    assert made[0].outputs[0].rate == 16000
    assert made[0].outputs[0].written == [b"\1\0" * 10]
    speaker = SpeakerOutput(open_devices(module))
    speaker.pending.put(b"queued")  # as if the device were still busy with earlier audio
    speaker.flush()
    assert speaker.pending.empty()


@pytest.mark.slow
@pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")
def test_live_talk_through_a_fake_microphone_transcribes_and_plays_the_reply(tmp_path: Path) -> None:
    """Real models; real speech from a VAP phrase comes in through the fake PyAudio input stream."""
    from duplexer.protocols.wav import read_wav
    from duplexer.runtime.events import CommitReply, PlayoutDone, PlayoutStarted
    from duplexer.sims.demo import demo_config, run_microphone, summarize_demo, turn_records, write_outputs
    from duplexer.sims.demo_cli import demo_engines

    speech = read_wav(PHRASES / "student_long_male_en-US-Wavenet-A.wav", INPUT_SAMPLE_RATE_HZ)
    second = 2 * INPUT_SAMPLE_RATE_HZ
    mic_pcm = bytes(second) + speech + bytes(20 * second)  # then silence while the bot answers
    module, made = fake_pyaudio_module(mic_pcm=mic_pcm)
    devices = open_devices(module)
    make_engines, _ = demo_engines()

    async def talk() -> Any:
        stop = asyncio.Event()
        started: list[float] = []

        def on_event(event: Any) -> None:
            if isinstance(event, PlayoutStarted):
                started.append(time.monotonic())
            if isinstance(event, PlayoutDone):
                stop.set()

        task = asyncio.create_task(
            run_microphone(devices, make_engines, demo_config(None), stop=stop, on_event=on_event)
        )
        await asyncio.wait_for(stop.wait(), timeout=30)  # a Ctrl-C would set it the same way
        return await task

    run = asyncio.run(talk())
    heard = [e.user_text.lower() for e in run.run.events if isinstance(e, CommitReply)]
    assert heard and "student" in heard[0] and "university" in heard[0]
    played = b"".join(made[0].outputs[0].written)
    assert len(played) > INPUT_SAMPLE_RATE_HZ  # over half a second of bot audio at 16 kHz, int16
    assert np.abs(np.frombuffer(played, dtype="<i2")).max() > 1000
    records = turn_records(run, None)
    summary = summarize_demo(records, run, None)
    assert len(records) == 1 and records[0]["response_latency_ms"] is not None
    assert 0 < records[0]["response_latency_ms"] < 5000
    assert summary["output_underruns"] == 0 and summary["errors"] == []
    write_outputs(tmp_path, "mic", run, records, summary)
    for name in ("mic.wav", "mic_timeline.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    document = json.loads((tmp_path / "mic.json").read_text())
    assert "student" in document["turns"][0]["user_transcript"].lower() and document["turns"][0]["bot_reply"]
    assert made[0].inputs[0].closed
    assert FRAME_MS == 20
