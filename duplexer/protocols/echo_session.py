"""A transport's echo handling across its sessions: which reference, which canceller, and the wire's side of it.

An MQTT device chooses in its config (``echo.mode``, config version 2): the
bridge cancels with what it sent (``server``, the default), with the device's
loopback on ``audio/ref`` (``loopback``), or not at all (``device``: it cancels
its own). A WebRTC call cancels on the server only with ``serve --aec server``,
since browsers cancel their own echo. :class:`SessionEcho` holds that choice and
the running :class:`~duplexer.protocols.echo_control.EchoControl`, and is the
transport's one handle on it: the sink tap for played audio, loopback frames,
and the microphone frames on their way to the VAD.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from duplexer.actors.engines import AudioSink
from duplexer.kernels.echo_cancel import EchoCanceller
from duplexer.protocols.echo_control import CancellerFactory, EchoControl, EchoParams
from duplexer.protocols.echo_reference import SAMPLES_PER_MS, LoopbackReference, PlayedReference
from duplexer.protocols.inbound_audio import InboundAudio
from duplexer.protocols.mqtt_topics import (
    MAX_AUDIO_PAYLOAD_BYTES,
    SEQ_MODULUS,
    AudioFormat,
    EchoConfig,
    EchoMode,
    ErrorCode,
    WireError,
    unpack_audio,
)
from duplexer.runtime.events import FRAME_SAMPLES
from duplexer.runtime.logging import get_logger
from duplexer.runtime.metrics import Metrics


def default_canceller() -> CancellerFactory:
    """The project's echo canceller kernel (:mod:`duplexer.kernels.echo_cancel`), one per session."""
    return EchoCanceller


def warm_up(make_canceller: CancellerFactory | None = None) -> None:
    """Load the canceller's compiled kernels now (blocking; call it in a thread), not in a live session's frame."""
    canceller = (make_canceller or default_canceller())()
    frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    for _ in range(3):
        canceller.process(frame, frame)
    if isinstance(canceller, EchoCanceller):
        canceller.compile_kernels()


class SessionEcho:
    """One device's (or call's) echo handling: its configured mode and its session's running echo control."""

    def __init__(
        self,
        config: EchoConfig | None = None,
        make_canceller: CancellerFactory | None = None,
        params: EchoParams | None = None,
        log: Any = None,
    ) -> None:
        self.config = config or EchoConfig()
        self.make_canceller = make_canceller
        self.params = params or EchoParams()
        self.log = log
        self.control: EchoControl | None = None
        self.sent_frames = 0
        """Bot audio frames the sink was given, ever: audio/out numbers its frames the same way."""
        self._session: tuple[AudioFormat | None, Metrics] | None = None
        self.learned_delay_ms: float | None = None
        """The echo delay an earlier session of this device found: where the next one starts, if the
        device declares none (the same device, room and playout path)."""

    # ------------------------------------------------------------ lifecycle

    def start(self, fmt: AudioFormat | None, metrics: Metrics) -> None:
        """A session starts: build its echo control as the config says (none for mode ``device``)."""
        self._learn()
        self._session = (fmt, metrics)
        self.control = None
        mode = self.config.mode
        if mode is EchoMode.DEVICE:
            return
        try:
            canceller = (self.make_canceller or default_canceller())()
        except Exception as exc:  # a session without echo cancellation still hears its user
            (self.log or get_logger(component="echo")).error("echo_canceller_unavailable", error=repr(exc))
            return
        if mode is EchoMode.LOOPBACK:
            if fmt is None:
                return
            reference: PlayedReference | LoopbackReference = LoopbackReference(fmt)
            initial_delay_ms: float | None = 0.0
        else:
            reference = PlayedReference()
            hint = self.config.playout_delay_ms
            # The microphone frame that carries the echo is numbered when it arrives: a frame later.
            initial_delay_ms = self.learned_delay_ms if hint is None else hint + (fmt.frame_ms if fmt else 20)
        self.control = EchoControl(reference, canceller, self.params, initial_delay_ms, metrics, self.log)

    def stop(self) -> None:
        self._learn()
        self.control, self._session = None, None

    def _learn(self) -> None:
        control = self.control
        if control is not None and control.locked and control.delay is not None and not control.loopback:
            self.learned_delay_ms = control.delay / SAMPLES_PER_MS

    def configure(self, config: EchoConfig, fmt: AudioFormat | None) -> None:
        """A (new) config: a running session switches to its echo handling at once."""
        changed = config != self.config or (self._session is not None and self._session[0] != fmt)
        self.config = config
        if changed and self._session is not None:
            self.start(fmt, self._session[1])

    # ------------------------------------------------------------ audio

    def tap(self, sink: AudioSink) -> AudioSink:
        """``sink``, with what it plays also kept as the echo reference (echo mode ``server``)."""
        return _ReferenceTap(sink, self)

    def played(self, pcm: bytes, sample_rate_hz: int, ts_ms: float) -> None:
        """Bot audio sent to the loudspeaker at session time ``ts_ms`` (the sink's tap)."""
        control, seq = self.control, self.sent_frames % SEQ_MODULUS
        self.sent_frames += 1
        if control is not None and isinstance(control.reference, PlayedReference):
            control.reference.write(pcm, sample_rate_hz, ts_ms, seq)

    def playout_report(
        self, seq: int, mic_seq: int, mic_offset: int, fmt: AudioFormat | None, mic: InboundAudio | None
    ) -> None:
        """The device's ``played`` control: audio/out frame ``seq`` began to play at sample ``mic_offset``
        of its microphone frame ``mic_seq``. Reports of unknown frames, or before any microphone audio, are
        counted and otherwise ignored."""
        control = self.control
        if control is None or not isinstance(control.reference, PlayedReference) or fmt is None or mic is None:
            return
        start_ms = mic.position_ms(mic_seq)
        placed = start_ms is not None and control.reference.played_at(
            seq, start_ms + 1000.0 * mic_offset / fmt.sample_rate_hz
        )
        control.counts["playout_reports" if placed else "playout_reports_ignored"] += 1

    def flushed(self) -> None:
        control = self.control
        if control is not None and isinstance(control.reference, PlayedReference):
            control.reference.flush()

    def reference_frame(
        self, payload: bytes, fmt: AudioFormat | None, now_ms: float | None, mic: InboundAudio | None
    ) -> None:
        """One ``audio/ref`` message, placed by the microphone stream ``mic``; raises WireError to refuse it."""
        if len(payload) > MAX_AUDIO_PAYLOAD_BYTES:
            raise WireError(
                ErrorCode.OVERSIZED,
                f"audio/ref message of {len(payload)} bytes exceeds the {MAX_AUDIO_PAYLOAD_BYTES}-byte limit",
            )
        header, pcm = unpack_audio(payload)
        if fmt is None or self.config.mode is not EchoMode.LOOPBACK:
            raise WireError(
                ErrorCode.BAD_CONFIG,
                'audio/ref frames need a config with "version": 2 and "echo": {"mode": "loopback"}; ignored',
            )
        fmt.check_frame(pcm)
        control = self.control
        if control is not None and now_ms is not None and isinstance(control.reference, LoopbackReference):
            control.reference.push(header, pcm, now_ms, mic)

    def process(self, seq: int, pcm: bytes, now_ms: float) -> tuple[bytes, float]:
        """A microphone pipeline frame on its way to the VAD: the frame to pass on and its speech gate."""
        control = self.control
        return (pcm, 1.0) if control is None else control.process(seq, pcm, now_ms)

    def stats(self) -> dict[str, Any]:
        control = self.control
        if control is None:
            return {"mode": self.config.mode.value}
        return {**control.stats(), "mode": self.config.mode.value}


class _ReferenceTap:
    """An audio sink that passes everything on and keeps what plays as the session's echo reference."""

    def __init__(self, sink: AudioSink, echo: SessionEcho) -> None:
        self.sink, self.echo = sink, echo

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        self.sink.write(pcm, sample_rate_hz, reply_id, ts_ms)
        self.echo.played(pcm, sample_rate_hz, ts_ms)

    def flush(self) -> None:
        self.sink.flush()
        self.echo.flushed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)
