"""The end-of-turn model: SmolLM2 in a second small llama.cpp context, reading the user's transcript
for how likely it is to be a finished message."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duplexer.actors.engines import Message
from duplexer.actors.models.compute_gate import ComputeGate, Urgency, gated
from duplexer.actors.models.packages import require_module, smollm2_model_path
from duplexer.actors.turn_detector import NEUTRAL_PROBABILITY, normalize_transcript


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
        with self.lock, gated(self.gate, Urgency.TURN_DETECTOR):
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

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        """Words only: the audio is another engine's to hear (:mod:`duplexer.actors.turn_fusion`)."""
        return await asyncio.to_thread(self.probability_blocking, transcript, tuple(context))

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if close is not None:
            close()
