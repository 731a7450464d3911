"""Running the engine on a Full-Duplex-Bench tree: output.wav and output.json beside each input.wav.

Each input.wav is the user, streamed in real time as ``duplexer talk FILE.wav`` streams it; the
bot's audio is written as FDB expects a system's answer: mono, bot only, on the input's clock and
exactly the input's length at the input's sample rate. Several samples run at once in one event
loop, since each spends most of its time waiting on the wall clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence

import numpy as np

from duplexer.actors.pipeline import PipelineConfig
from duplexer.kernels.audio import float_to_pcm16, pcm16_to_float, resample
from duplexer.kernels.loudness import audible_spans
from duplexer.protocols.wav import WavError, read_wav, write_wav
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
from duplexer.sims.audio_timeline import VAD_MIN_SILENCE_MS
from duplexer.sims.demo import recording_scenario
from duplexer.sims.fdb import (
    ASR_RATE_HZ,
    INPUT_WAV,
    OUTPUT_JSON,
    OUTPUT_WAV,
    FdbError,
    Sample,
    SampleScore,
    Transcriber,
    output_json,
    read_json,
    score_sample,
    transcribe_output,
    wav_format,
    words_from_chunks,
)
from duplexer.sims.live import EngineFactory, run_live
from duplexer.sims.turn_metrics import Word


def fit_to_input(bot_16k: np.ndarray, rate_hz: int, frames: int) -> np.ndarray:
    """The bot's 16 kHz track at the input's rate, cut or padded with silence to ``frames`` samples."""
    audio = resample(pcm16_to_float(bot_16k), INPUT_SAMPLE_RATE_HZ, rate_hz) if len(bot_16k) else np.zeros(0)
    out = np.zeros(frames, dtype=np.float32)
    n = min(frames, len(audio))
    out[:n] = audio[:n]
    return np.frombuffer(float_to_pcm16(out), dtype="<i2")


async def run_sample(
    sample: Sample, make_engines: EngineFactory, config: PipelineConfig, system_prompt: str | None = None
) -> None:
    """Talk to one input.wav in real time; write output.wav (FDB's layout) beside it."""
    rate_hz, frames, _ = wav_format(sample.path(INPUT_WAV))
    try:
        pcm = read_wav(sample.path(INPUT_WAV), INPUT_SAMPLE_RATE_HZ)
        scenario, clips = recording_scenario(pcm, sample.name)
    except (WavError, ValueError) as exc:
        raise FdbError(str(exc)) from None
    # The whole input is the microphone, noise and all, and the run ends with it: output.wav is on its clock.
    live = await run_live(scenario, clips, make_engines, config, system_prompt, recording=pcm, quiet_wait_ms=None)
    out = fit_to_input(live.bot_track, rate_hz, frames)
    write_wav(sample.path(OUTPUT_WAV), out.tobytes(), rate_hz)


def output_audio_16k(sample: Sample) -> np.ndarray:
    """output.wav as FDB's ASR and VAD hear it: mono, 16 kHz, float."""
    try:
        return pcm16_to_float(read_wav(sample.path(OUTPUT_WAV), ASR_RATE_HZ))
    except WavError as exc:
        raise FdbError(str(exc)) from None


def sample_words(sample: Sample, audio_16k: np.ndarray, transcribe: Transcriber | None, write: bool) -> list[Word]:
    """output.json's words where it exists (unless ``write``); else ASR on output.wav, written as output.json."""
    path = sample.path(OUTPUT_JSON)
    if path.exists() and not write:
        return words_from_chunks(read_json(path), path)
    if transcribe is None:
        raise FdbError(f"{path}: no such file, and no ASR to make it")
    document = output_json(transcribe_output(sample, audio_16k, transcribe))
    path.write_text(json.dumps(document, indent=1) + "\n")
    return words_from_chunks(document, path)  # as written (to the ms), so a rescore gives the same figures


def score_folder(
    sample: Sample, transcribe: Transcriber | None, icc_gt: dict | None, rewrite_words: bool = False
) -> SampleScore:
    """One sample's figures from its output.wav and output.json; a bad sample gives a row with its error."""
    try:
        audio = output_audio_16k(sample)
        words = sample_words(sample, audio, transcribe, rewrite_words)
        return score_sample(sample, words, audio, icc_gt)
    except FdbError as exc:
        return SampleScore(sample.name, sample.task, error=str(exc))


async def run_tree(
    samples: Sequence[Sample],
    make_engines: EngineFactory,
    config: PipelineConfig,
    transcribe: Transcriber | None,
    concurrency: int,
    icc_gt: dict | None = None,
    on_done: Callable[[SampleScore], None] | None = None,
) -> list[SampleScore]:
    """Run and score every sample, ``concurrency`` at a time; a sample that fails is scored with its error."""
    gate = asyncio.Semaphore(concurrency)

    async def one(sample: Sample) -> SampleScore:
        async with gate:
            try:
                await run_sample(sample, make_engines, config)
            except FdbError as exc:
                score = SampleScore(sample.name, sample.task, error=str(exc))
            except Exception as exc:  # one sample's engine failure must not lose the others' results
                score = SampleScore(sample.name, sample.task, error=f"{type(exc).__name__}: {exc}")
            else:
                # ASR on the output runs off the loop, so the other sessions keep real time.
                score = await asyncio.to_thread(score_folder, sample, transcribe, icc_gt, True)
        if on_done is not None:
            on_done(score)
        return score

    return list(await asyncio.gather(*(one(s) for s in samples)))


HUM_WORD_MS = 400.0
"""Scripted engines hum instead of speaking; each this long of audible hum counts as one word."""
HUM_WORD = "[hum]"


def hum_words(audio_16k: np.ndarray) -> list[tuple[str, float, float]]:
    """A model-free stand-in for ASR on a scripted bot's hum: one ``[hum]`` word per
    :data:`HUM_WORD_MS` of each audible stretch, so FDB's word rules apply to its timing."""
    words: list[tuple[str, float, float]] = []
    for start, end in audible_spans(audio_16k, ASR_RATE_HZ, max_gap_ms=VAD_MIN_SILENCE_MS):
        n = max(1, round((end - start) / HUM_WORD_MS))
        step = (end - start) / n
        words += [(HUM_WORD, start + i * step, start + (i + 1) * step) for i in range(n)]
    return words
