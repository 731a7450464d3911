"""Fit the test tokenizer's codebooks on the VAP phrase recordings, reproducibly.

Run ``python -m duplexer.bench.tokenizer_fit ../shared/data/vap_phrases
duplexer/actors/data/test_tokenizer_codebooks.npz`` to regenerate the shipped file.

Procedure, for each codebook (linguistic: 40 bands, 60 ms tokens, 32 x 32 codes; semantic:
80 bands, 40 ms tokens, 64 x 64 codes):

1. Every ``audio/*.wav`` (sorted by name; 24 kHz mono PCM16) is resampled to 16 kHz.
2. Its causal log-mel frames are computed exactly as the engine computes them.
3. Training vectors are the means of a token's worth of frames at every 10 ms offset, which
   gives 6 (linguistic) or 4 (semantic) times as many vectors as non-overlapping tokens.
4. Vectors are standardised per band (mean, standard deviation floored at ``SCALE_FLOOR``).
5. The low and the high half of the bands each get k-means: k-means++ seeding from a
   generator seeded with ``(FIT_SEED, codebook, half)``, then Lloyd iterations until no
   assignment changes (at most ``MAX_ITERATIONS``); an emptied cluster takes the vector
   farthest from its centroid.

The same recordings give the same codebooks; ``meta`` records the inputs' SHA-256.
"""

from __future__ import annotations

import hashlib
import sys
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from duplexer.actors.tokenizer_engines import (
    LINGUISTIC_TEST_SPEC,
    MEL_HOP_MS,
    SEMANTIC_TEST_SPEC,
    FloatArray,
    LogMelCodebooks,
    LogMelTokenSpec,
    ProductCodebook,
    StreamingLogMel,
)
from duplexer.kernels.audio import downmix, pcm16_to_float, resample
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

FIT_SEED: Final = 8
MAX_ITERATIONS: Final = 100
SCALE_FLOOR: Final = 1e-3


def read_wav_16k(path: Path) -> npt.NDArray[np.float32]:
    """A PCM16 wav as mono float samples at 16 kHz."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit samples")
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = wav.readframes(wav.getnframes())
    samples = downmix(pcm16_to_float(pcm), channels)
    return resample(samples, rate, INPUT_SAMPLE_RATE_HZ)


def vap_recordings(root: Path) -> list[Path]:
    """The VAP phrase recordings under ``root/audio``, sorted by name."""
    paths = sorted((root / "audio").glob("*.wav"))
    if not paths:
        raise FileNotFoundError(f"no audio/*.wav under {root}; pass the vap_phrases data directory")
    return paths


def training_vectors(recordings: Sequence[FloatArray], spec: LogMelTokenSpec) -> FloatArray:
    """Token-length frame means at every hop offset of every recording, stacked."""
    k = spec.frames_per_token
    parts = []
    for audio in recordings:
        frames = StreamingLogMel(spec.n_mels).push(audio)
        if frames.shape[0] >= k:
            parts.append(np.lib.stride_tricks.sliding_window_view(frames, k, axis=0).mean(axis=2))
    return np.concatenate(parts)


def squared_distances(vectors: FloatArray, centroids: FloatArray) -> FloatArray:
    """(n, k) squared Euclidean distances."""
    return (
        (vectors * vectors).sum(axis=1)[:, None]
        - 2.0 * vectors @ centroids.T
        + (centroids * centroids).sum(axis=1)[None, :]
    )


def kmeans(
    vectors: FloatArray, k: int, rng: np.random.Generator, max_iterations: int = MAX_ITERATIONS
) -> tuple[FloatArray, int]:
    """k-means++ seeding then Lloyd iterations; returns (centroids, iterations run)."""
    n = vectors.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least {k} vectors, got {n}")
    centroids = np.empty((k, vectors.shape[1]))
    centroids[0] = vectors[rng.integers(n)]
    closest = np.maximum(squared_distances(vectors, centroids[:1])[:, 0], 0.0)
    for i in range(1, k):
        total = closest.sum()
        pick = int(rng.choice(n, p=closest / total)) if total > 0 else int(rng.integers(n))
        centroids[i] = vectors[pick]
        closest = np.minimum(closest, np.maximum(squared_distances(vectors, centroids[i : i + 1])[:, 0], 0.0))
    assignment: npt.NDArray[np.int64] | None = None
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is returned
        distances = squared_distances(vectors, centroids)
        new_assignment = np.argmin(distances, axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = np.bincount(assignment, minlength=k)
        sums = np.stack(
            [np.bincount(assignment, weights=vectors[:, j], minlength=k) for j in range(vectors.shape[1])],
            axis=1,
        )
        own = distances[np.arange(n), assignment]
        for empty in np.flatnonzero(counts == 0).tolist():
            farthest = int(np.argmax(own))
            sums[empty], counts[empty], own[farthest] = vectors[farthest], 1, -np.inf
        centroids = sums / counts[:, None]
    return centroids, iterations


def fit_product_codebook(
    vectors: FloatArray, spec: LogMelTokenSpec, book_index: int
) -> tuple[ProductCodebook, dict[str, Any]]:
    """Standardise, split the bands in halves, k-means each half."""
    mean = vectors.mean(axis=0)
    scale = np.maximum(vectors.std(axis=0), SCALE_FLOOR)
    z = (vectors - mean) / scale
    split = spec.n_mels // 2
    halves = []
    iterations = []
    for half_index, part in enumerate((z[:, :split], z[:, split:])):
        rng = np.random.default_rng([FIT_SEED, book_index, half_index])
        centroids, ran = kmeans(part, spec.centroids_per_half, rng)
        halves.append(centroids)
        iterations.append(ran)
    info = {
        "n_mels": spec.n_mels,
        "token_ms": spec.token_ms,
        "centroids_per_half": spec.centroids_per_half,
        "codes": spec.codebook_size,
        "training_vectors": int(vectors.shape[0]),
        "lloyd_iterations": iterations,
    }
    return ProductCodebook(mean, scale, halves[0], halves[1]), info


def fit_codebooks(root: Path) -> LogMelCodebooks:
    """Fit both codebooks on the VAP phrases under ``root`` (the procedure in the module docstring)."""
    paths = vap_recordings(root)
    digest = hashlib.sha256()
    recordings = []
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        recordings.append(read_wav_16k(path).astype(np.float64))
    books = {}
    meta: dict[str, Any] = {
        "what": "test tokenizer codebooks: product k-means over log-mel features; not Step-Audio",
        "source": "VAP phrases audio/*.wav (MIT), resampled to 16 kHz",
        "files": len(paths),
        "audio_s": round(sum(len(r) for r in recordings) / INPUT_SAMPLE_RATE_HZ, 3),
        "sha256": digest.hexdigest(),
        "seed": FIT_SEED,
        "max_iterations": MAX_ITERATIONS,
        "hop_ms": MEL_HOP_MS,
        "fit": "python -m duplexer.bench.tokenizer_fit VAP_PHRASES_DIR OUT.npz",
    }
    for book_index, spec in enumerate((LINGUISTIC_TEST_SPEC, SEMANTIC_TEST_SPEC)):
        books[spec.name], meta[spec.name] = fit_product_codebook(training_vectors(recordings, spec), spec, book_index)
    return LogMelCodebooks(books["linguistic"], books["semantic"], meta)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m duplexer.bench.tokenizer_fit VAP_PHRASES_DIR OUT.npz\n")
        return 2
    root, out = Path(argv[0]), Path(argv[1])
    try:
        codebooks = fit_codebooks(root)
    except (FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"tokenizer_fit: error: {exc}\n")
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    codebooks.save(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
