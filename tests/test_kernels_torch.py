"""Specification of the torch interleave + embedding gather (fused and unfused), checked on CPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.kernels import TokenRangeError, gpu, interleave_batch
from duplexer.kernels.tokens import (
    AUDIO_ID_END,
    LINGUISTIC_CODEBOOK_SIZE,
    SEMANTIC_CODEBOOK_SIZE,
)

VOCAB = AUDIO_ID_END + 2


def random_chunks(batch: int, groups: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-length chunks of whole groups for `batch` sessions."""
    rng = np.random.default_rng(seed)
    ling = rng.integers(0, LINGUISTIC_CODEBOOK_SIZE, (batch, 2 * groups))
    sem = rng.integers(0, SEMANTIC_CODEBOOK_SIZE, (batch, 3 * groups))
    return ling, sem


@pytest.fixture(scope="module")
def table() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((VOCAB, 6), generator=generator)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 5), groups=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_fused_gather_equals_the_numpy_reference_embedding_lookup(
    table: torch.Tensor, batch: int, groups: int, seed: int
) -> None:
    ling, sem = random_chunks(batch, groups, seed)
    lengths_l = np.full(batch, ling.shape[1])
    lengths_s = np.full(batch, sem.shape[1])
    ids = interleave_batch(ling, lengths_l, sem, lengths_s, backend="numpy").ids
    want = table.numpy()[ids]
    got = gpu.interleave_embed(torch.from_numpy(ling), torch.from_numpy(sem), table)
    assert got.shape == (batch, 5 * groups, table.shape[1])
    np.testing.assert_array_equal(got.numpy(), want)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 4), groups=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_fused_gather_equals_unfused_interleave_then_embedding(
    table: torch.Tensor, batch: int, groups: int, seed: int
) -> None:
    ling, sem = (torch.from_numpy(x) for x in random_chunks(batch, groups, seed))
    torch.testing.assert_close(
        gpu.interleave_embed(ling, sem, table),
        gpu.interleave_embed_unfused(ling, sem, table),
        rtol=0,
        atol=0,
    )


def test_interleaved_id_tensor_equals_the_numpy_interleave() -> None:
    ling, sem = random_chunks(3, 4, seed=1)
    ids = gpu.interleave_ids_torch(torch.from_numpy(ling), torch.from_numpy(sem))
    want = interleave_batch(ling, [8, 8, 8], sem, [12, 12, 12]).ids
    assert ids.tolist() == want.tolist()


def test_int32_codes_are_accepted(table: torch.Tensor) -> None:
    ling, sem = random_chunks(2, 3, seed=2)
    got = gpu.interleave_embed(torch.from_numpy(ling).int(), torch.from_numpy(sem).int(), table)
    want = gpu.interleave_embed(torch.from_numpy(ling), torch.from_numpy(sem), table)
    assert torch.equal(got, want)


@pytest.mark.parametrize("embed", [gpu.interleave_embed, gpu.interleave_embed_unfused])
def test_out_of_codebook_codes_are_rejected_naming_session_and_index(table: torch.Tensor, embed: object) -> None:
    ling, sem = random_chunks(2, 2, seed=3)
    ling[1, 3] = LINGUISTIC_CODEBOOK_SIZE  # would silently hit a semantic row if unchecked
    with pytest.raises(TokenRangeError, match="session 1: linguistic code 1024 at index 3"):
        embed(torch.from_numpy(ling), torch.from_numpy(sem), table)  # type: ignore[operator]


def test_partial_groups_and_small_tables_are_rejected(table: torch.Tensor) -> None:
    ling = torch.zeros((1, 3), dtype=torch.int64)
    sem = torch.zeros((1, 3), dtype=torch.int64)
    with pytest.raises(ValueError, match="whole groups"):
        gpu.interleave_embed(ling, sem, table)
    with pytest.raises(ValueError, match="embedding table"):
        gpu.interleave_embed(ling[:, :2], sem, table[:100])
    with pytest.raises(TypeError, match="int32 or int64"):
        gpu.interleave_embed(ling[:, :2].float(), sem, table)


def test_importing_the_kernels_package_does_not_import_torch() -> None:
    code = "import sys, duplexer.kernels, duplexer.kernels.gpu; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_torch_says_pip_install_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModuleNotFoundError, match="pip install torch"):
        gpu.require_torch()


def test_default_device_is_cuda_only_when_available() -> None:
    assert gpu.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
