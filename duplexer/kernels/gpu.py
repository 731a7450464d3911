"""Torch path: batched 2:3 interleave fused with the embedding-row gather (GPU, or CPU).

Input is the "equal-length chunks" batch form: every session contributes the same number of
complete groups (`ling` is [batch, 2*groups], `sem` is [batch, 3*groups]). The fused form
never materialises LLM ids: it builds row indices into the audio part of the table in codec
space (one concatenation) and gathers every embedding row once, straight into interleaved
order. The unfused form (interleave ids, then `torch.nn.functional.embedding`) is kept as the
baseline it is measured and tested against. torch is imported lazily.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from duplexer.kernels.errors import Fault, TokenRangeError, interleave_fault_error
from duplexer.kernels.tokens import (
    AUDIO_ID_END,
    AUDIO_ID_OFFSET,
    AUDIO_VOCAB_SIZE,
    GROUP_SIZE,
    LINGUISTIC_CODEBOOK_SIZE,
    LINGUISTIC_ID_OFFSET,
    LINGUISTIC_PER_GROUP,
    SEMANTIC_CODEBOOK_SIZE,
    SEMANTIC_ID_OFFSET,
    SEMANTIC_PER_GROUP,
)

if TYPE_CHECKING:
    import torch


def require_torch() -> ModuleType:
    """Import torch, or explain how to get it."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - exercised only without torch
        raise ModuleNotFoundError(
            "the torch embedding path of duplexer.kernels needs PyTorch: pip install torch"
        ) from error
    return torch


def default_device() -> str:
    """'cuda' when a CUDA device is usable, else 'cpu'."""
    torch = require_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def _groups(ling: torch.Tensor, sem: torch.Tensor) -> int:
    """Number of groups per session, after checking the two code tensors agree."""
    if ling.dim() != 2 or sem.dim() != 2 or ling.shape[0] != sem.shape[0]:
        raise ValueError("ling and sem must be [batch, codes] tensors with the same batch size")
    groups = ling.shape[1] // LINGUISTIC_PER_GROUP
    if ling.shape[1] != groups * LINGUISTIC_PER_GROUP or sem.shape[1] != groups * SEMANTIC_PER_GROUP:
        raise ValueError(
            f"need whole groups: ling [B, {LINGUISTIC_PER_GROUP}*G] and sem "
            f"[B, {SEMANTIC_PER_GROUP}*G], got {tuple(ling.shape)} and {tuple(sem.shape)}"
        )
    if ling.dtype not in _index_dtypes() or sem.dtype not in _index_dtypes():
        raise TypeError(f"codes must be int32 or int64 tensors, got {ling.dtype} and {sem.dtype}")
    return groups


def _index_dtypes() -> tuple[object, ...]:
    """Integer dtypes accepted as gather indices."""
    torch = require_torch()
    return (torch.int32, torch.int64)


def check_codes(ling: torch.Tensor, sem: torch.Tensor) -> None:
    """Raise `TokenRangeError` naming session and index for the first out-of-codebook code.

    Needed because the fused gather indexes the audio sub-table, where a too-large
    linguistic code would silently land on a semantic row. Synchronises on GPU.
    """
    for codes, size, fault in (
        (ling, LINGUISTIC_CODEBOOK_SIZE, Fault.LINGUISTIC_CODE_RANGE),
        (sem, SEMANTIC_CODEBOOK_SIZE, Fault.SEMANTIC_CODE_RANGE),
    ):
        bad = (codes < 0) | (codes >= size)
        if bool(bad.any()):
            session, index = (int(v) for v in bad.nonzero()[0])
            error = interleave_fault_error(fault, index, int(codes[session, index]))
            raise TokenRangeError(f"session {session}: {error}", error.fault, index, error.token_id)


def _check_table(table: torch.Tensor) -> None:
    """The table must hold every audio id as a row."""
    if table.dim() != 2 or table.shape[0] < AUDIO_ID_END:
        raise ValueError(f"embedding table must be [vocab >= {AUDIO_ID_END}, dim], got {tuple(table.shape)}")


def interleave_ids_torch(ling: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
    """[B, 2G] + [B, 3G] codes -> [B, 5G] int64 LLM ids in 2:3 group order (the unfused step 1)."""
    torch = require_torch()
    groups = _groups(ling, sem)
    batch = ling.shape[0]
    ids = torch.empty((batch, groups, GROUP_SIZE), dtype=torch.int64, device=ling.device)
    ids[:, :, :LINGUISTIC_PER_GROUP] = ling.view(batch, groups, LINGUISTIC_PER_GROUP)
    ids[:, :, LINGUISTIC_PER_GROUP:] = sem.view(batch, groups, SEMANTIC_PER_GROUP)
    ids[:, :, :LINGUISTIC_PER_GROUP] += LINGUISTIC_ID_OFFSET
    ids[:, :, LINGUISTIC_PER_GROUP:] += SEMANTIC_ID_OFFSET
    return ids.view(batch, groups * GROUP_SIZE)


def interleave_embed_unfused(
    ling: torch.Tensor, sem: torch.Tensor, table: torch.Tensor, *, validate: bool = True
) -> torch.Tensor:
    """Baseline: build the interleaved ids, then `F.embedding` -> [B, 5G, dim]."""
    torch = require_torch()
    _check_table(table)
    if validate:
        check_codes(ling, sem)
    return torch.nn.functional.embedding(interleave_ids_torch(ling, sem), table)


def interleave_embed(
    ling: torch.Tensor, sem: torch.Tensor, table: torch.Tensor, *, validate: bool = True
) -> torch.Tensor:
    """Fused: gather the embedding rows of the interleaved ids in one pass -> [B, 5G, dim].

    Row indices are built in codec space against the audio slice of `table` (a view), so the
    LLM id tensor is never formed and each output row is written exactly once.
    """
    torch = require_torch()
    _check_table(table)
    groups = _groups(ling, sem)
    if validate:
        check_codes(ling, sem)
    batch = ling.shape[0]
    audio_rows = table.narrow(0, AUDIO_ID_OFFSET, AUDIO_VOCAB_SIZE)
    rows = torch.cat(
        (
            ling.view(batch, groups, LINGUISTIC_PER_GROUP),
            sem.view(batch, groups, SEMANTIC_PER_GROUP) + (SEMANTIC_ID_OFFSET - LINGUISTIC_ID_OFFSET),
        ),
        dim=2,
    )
    gathered = torch.index_select(audio_rows, 0, rows.view(-1))
    return gathered.view(batch, groups * GROUP_SIZE, table.shape[1])
