"""Step-Audio token kernels: 2:3 codec interleave, AQAA text/audio demux, batched and streaming.

NumPy reference and numba implementations share one API (``backend="numpy" | "numba"``); the
torch embedding path lives in `duplexer.kernels.gpu` and is imported only on demand.
"""

from duplexer.kernels.api import (
    AqaaDemuxer,
    Backend,
    BatchAqaaDemuxer,
    BatchFaults,
    DeinterleavedBatch,
    DemuxedBatch,
    InterleavedBatch,
    StreamingDeinterleaver,
    StreamingInterleaver,
    aqaa_demux,
    aqaa_mux,
    deinterleave,
    deinterleave_batch,
    interleave,
    interleave_batch,
    split_rows,
)
from duplexer.kernels.errors import (
    Fault,
    MarkerError,
    TokenOrderError,
    TokenRangeError,
    TokenStreamError,
)
from duplexer.kernels.tokens import AqaaConfig

__all__ = [
    "AqaaConfig",
    "AqaaDemuxer",
    "Backend",
    "BatchAqaaDemuxer",
    "BatchFaults",
    "DeinterleavedBatch",
    "DemuxedBatch",
    "Fault",
    "InterleavedBatch",
    "MarkerError",
    "StreamingDeinterleaver",
    "StreamingInterleaver",
    "TokenOrderError",
    "TokenRangeError",
    "TokenStreamError",
    "aqaa_demux",
    "aqaa_mux",
    "deinterleave",
    "deinterleave_batch",
    "interleave",
    "interleave_batch",
    "split_rows",
]
