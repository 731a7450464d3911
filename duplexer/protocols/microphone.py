"""Live talk through the default microphone and speaker (PyAudio), when the machine has them."""

from __future__ import annotations

from typing import Any


class MicrophoneUnavailable(RuntimeError):
    """No PyAudio, or no input device: the message says which."""


def default_input_device() -> Any:
    """PyAudio and its default input device info, or MicrophoneUnavailable."""
    try:
        import pyaudio  # type: ignore[import-not-found]
    except ImportError:
        raise MicrophoneUnavailable("--mic needs PyAudio: pip install pyaudio") from None
    audio = pyaudio.PyAudio()
    try:
        return audio, audio.get_default_input_device_info()
    except OSError:
        audio.terminate()
        raise MicrophoneUnavailable("no audio input device on this machine; use duplexer talk FILE.wav") from None


def talk_live(persona: Any) -> int:
    """Not reached on machines without a microphone; refuses clearly there."""
    audio, device = default_input_device()
    audio.terminate()
    raise MicrophoneUnavailable(
        f"live microphone talk is not implemented yet (found input device {device.get('name')!r}); "
        "use duplexer talk FILE.wav"
    )
