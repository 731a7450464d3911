"""Live talk through the default microphone and speaker (PyAudio), when the machine has them.

PyAudio is optional (``pip install 'duplexer[mic]'``; building it needs PortAudio's headers, e.g.
Debian's ``portaudio19-dev``). Without it, or without an input device, :func:`open_devices` raises
:class:`MicrophoneUnavailable` with a one-line reason.

- :class:`MicrophoneInput` opens a 16 kHz mono int16 input stream in callback mode; PyAudio's
  thread hands each buffer to the event loop, which cuts it into ``FRAME_MS`` frames.
- :class:`SpeakerOutput` is an :class:`~duplexer.actors.engines.AudioSink`: the playout actor paces
  bot audio in real time, a writer thread blocks on the output stream, and ``flush`` drops what is
  still queued (a barge-in).

Both take the PyAudio module as a parameter, so tests can pass a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from duplexer.runtime.events import FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ

SAMPLE_BYTES = 2
"""int16 mono."""
NO_INPUT_DEVICE = "no audio input device on this machine; use duplexer talk FILE.wav"


class MicrophoneUnavailable(RuntimeError):
    """No PyAudio, or no input device: the message says which."""


def load_pyaudio() -> Any:
    try:
        import pyaudio  # type: ignore[import-not-found]
    except ImportError:
        raise MicrophoneUnavailable(
            "--mic needs PyAudio: pip install 'duplexer[mic]' (after PortAudio's headers: apt install portaudio19-dev)"
        ) from None
    return pyaudio


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """PortAudio's ALSA and JACK probes print pages of warnings on file descriptor 2; hide them."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (pytest capture): nothing to hide
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(devnull)
        os.close(saved)


class AudioDevices:
    """One PyAudio instance with a default input device, and the default output device if any."""

    def __init__(self, pyaudio_module: Any) -> None:
        self.pa = pyaudio_module
        with _quiet_native_stderr():
            self.audio = pyaudio_module.PyAudio()
            try:
                self.input_info: dict[str, Any] = self.audio.get_default_input_device_info()
            except OSError:
                self.audio.terminate()
                raise MicrophoneUnavailable(NO_INPUT_DEVICE) from None
            try:
                self.output_info: dict[str, Any] | None = self.audio.get_default_output_device_info()
            except OSError:
                self.output_info = None  # bot audio is still recorded, just not heard

    @property
    def input_name(self) -> str:
        return str(self.input_info.get("name", "default input"))

    def close(self) -> None:
        self.audio.terminate()


def open_devices(pyaudio_module: Any | None = None) -> AudioDevices:
    """PyAudio and its default devices, or :class:`MicrophoneUnavailable`."""
    return AudioDevices(pyaudio_module if pyaudio_module is not None else load_pyaudio())


class MicrophoneInput:
    """The default microphone as 16 kHz mono PCM16 frames of ``FRAME_SAMPLES`` samples."""

    def __init__(self, devices: AudioDevices) -> None:
        self.devices = devices
        self.stream: Any = None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        assert self.loop is not None
        if in_data:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, bytes(in_data))
        return None, self.devices.pa.paContinue

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            self.stream = self.devices.audio.open(
                format=self.devices.pa.paInt16,
                channels=1,
                rate=INPUT_SAMPLE_RATE_HZ,
                input=True,
                frames_per_buffer=FRAME_SAMPLES,
                stream_callback=self._callback,
            )
        except OSError as exc:
            raise MicrophoneUnavailable(
                f"cannot open {self.devices.input_name!r} at {INPUT_SAMPLE_RATE_HZ} Hz mono: {exc}"
            ) from None
        self.stream.start_stream()

    async def frames(self) -> AsyncIterator[bytes]:
        """Whole frames as they arrive, until :meth:`close`."""
        pending = b""
        frame_bytes = FRAME_SAMPLES * SAMPLE_BYTES
        while (chunk := await self.queue.get()) is not None:
            pending += chunk
            while len(pending) >= frame_bytes:
                yield pending[:frame_bytes]
                pending = pending[frame_bytes:]

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop_stream()
            self.stream.close()
            self.stream = None
        self.queue.put_nowait(None)


class SpeakerOutput:
    """Bot audio to the default output device; an AudioSink. The stream opens at the first write's rate."""

    def __init__(self, devices: AudioDevices) -> None:
        self.devices = devices
        self.stream: Any = None
        self.rate_hz: int | None = None
        self.pending: queue.Queue[bytes | None] = queue.Queue()
        self.writer: threading.Thread | None = None

    def _write_loop(self) -> None:
        while (pcm := self.pending.get()) is not None:
            self.stream.write(pcm)

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        if self.stream is None:
            self.rate_hz = sample_rate_hz
            self.stream = self.devices.audio.open(
                format=self.devices.pa.paInt16, channels=1, rate=sample_rate_hz, output=True
            )
            self.writer = threading.Thread(target=self._write_loop, name="speaker", daemon=True)
            self.writer.start()
        elif sample_rate_hz != self.rate_hz:
            raise ValueError(f"speaker opened at {self.rate_hz} Hz, got audio at {sample_rate_hz} Hz")
        self.pending.put(pcm)

    def flush(self) -> None:
        """Drop queued audio (a barge-in); what the device already holds plays out (a few ms)."""
        try:
            while True:
                item = self.pending.get_nowait()
                if item is None:  # closing: keep the sentinel
                    self.pending.put(None)
                    return
        except queue.Empty:
            pass

    def close(self) -> None:
        if self.writer is not None:
            self.pending.put(None)
            self.writer.join(timeout=5.0)
            self.writer = None
        if self.stream is not None:
            self.stream.stop_stream()
            self.stream.close()
            self.stream = None
