"""Specification of the AQAA 10:15 text/audio mux and the streaming demuxer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.kernels import (
    AqaaConfig,
    AqaaDemuxer,
    MarkerError,
    TokenOrderError,
    TokenRangeError,
    aqaa_demux,
    aqaa_mux,
    fast,
    reference,
)
from duplexer.kernels.tokens import (
    AQAA_AUDIO_PER_CYCLE,
    AQAA_TEXT_PER_CYCLE,
    AUDIO_ID_END,
    AUDIO_ID_OFFSET,
    DEFAULT_AUDIO_END_ID,
    DEFAULT_AUDIO_START_ID,
    DEFAULT_VOCAB_SIZE,
    NO_KIND,
)

BACKENDS = ["numpy", "numba"]
FAST = settings(max_examples=150, deadline=None)
START, END, VOCAB = DEFAULT_AUDIO_START_ID, DEFAULT_AUDIO_END_ID, DEFAULT_VOCAB_SIZE
TEXT = list(range(100, 200))  # plain text ids for hand-written cases
AUDIO = list(range(AUDIO_ID_OFFSET, AUDIO_ID_OFFSET + 200))

text_ids = st.lists(st.integers(0, AUDIO_ID_OFFSET - 1), max_size=70)
audio_ids = st.lists(st.integers(AUDIO_ID_OFFSET, AUDIO_ID_END - 1), max_size=110)


def cut(values: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    """Split `values` at the given (unsorted, possibly repeated) cut points."""
    points = sorted(min(c, len(values)) for c in cuts)
    return [values[a:b] for a, b in zip([0, *points], [*points, len(values)], strict=True)]


def test_mux_lays_out_ten_text_then_fifteen_audio_between_markers() -> None:
    ids = aqaa_mux(TEXT[:20], AUDIO[:30]).tolist()
    assert ids[0] == START and ids[-1] == END
    body = ids[1:-1]
    assert body[:10] == TEXT[:10]
    assert body[10:25] == AUDIO[:15]
    assert body[25:35] == TEXT[10:20]
    assert body[35:50] == AUDIO[15:30]
    assert (AQAA_TEXT_PER_CYCLE, AQAA_AUDIO_PER_CYCLE) == (10, 15)


def test_when_text_runs_out_the_remaining_positions_are_audio() -> None:
    body = aqaa_mux(TEXT[:13], AUDIO[:40], with_markers=False).tolist()
    assert body == TEXT[:10] + AUDIO[:15] + TEXT[10:13] + AUDIO[15:40]


def test_when_audio_runs_out_the_remaining_positions_are_text() -> None:
    body = aqaa_mux(TEXT[:30], AUDIO[:4], with_markers=False).tolist()
    assert body == TEXT[:10] + AUDIO[:4] + TEXT[10:30]


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(text=text_ids, audio=audio_ids, cuts=st.lists(st.integers(0, 200), max_size=10))
def test_mux_then_demux_is_the_identity_for_any_lengths_and_chunking(
    backend: str, text: list[int], audio: list[int], cuts: list[int]
) -> None:
    ids = aqaa_mux(text, audio, backend=backend)  # type: ignore[arg-type]
    demuxer = AqaaDemuxer(backend=backend)  # type: ignore[arg-type]
    got_text: list[int] = []
    got_audio: list[int] = []
    for chunk in cut(ids, cuts):
        t, a = demuxer.push(chunk)
        got_text += t.tolist()
        got_audio += a.tolist()
    demuxer.close()
    assert (got_text, got_audio) == (text, audio)
    assert demuxer.segments_closed == 1 and not demuxer.in_segment


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15, deadline=None)
@given(text=text_ids, audio=audio_ids)
def test_demuxer_accepts_token_by_token_input(backend: str, text: list[int], audio: list[int]) -> None:
    demuxer = AqaaDemuxer(backend=backend)  # type: ignore[arg-type]
    got_text: list[int] = []
    got_audio: list[int] = []
    for token in aqaa_mux(text, audio, backend=backend).tolist():  # type: ignore[arg-type]
        t, a = demuxer.push([token])
        got_text += t.tolist()
        got_audio += a.tolist()
    assert (got_text, got_audio) == (text, audio)


@FAST
@given(text=text_ids, audio=audio_ids, markers=st.booleans())
def test_numba_mux_equals_numpy_reference(text: list[int], audio: list[int], markers: bool) -> None:
    cfg = AqaaConfig()
    args = (START, END, cfg.vocab_size, cfg.text_per_cycle, cfg.audio_per_cycle, markers)
    t, a = np.array(text, np.int64), np.array(audio, np.int64)
    want, got = reference.aqaa_mux(t, a, *args), fast.aqaa_mux(t, a, *args)
    assert got[0].tolist() == want[0].tolist()
    assert got[1:] == want[1:]


any_ids = st.lists(
    st.one_of(
        st.integers(0, 50),
        st.integers(AUDIO_ID_OFFSET, AUDIO_ID_OFFSET + 50),
        st.sampled_from([START, END, -1, DEFAULT_VOCAB_SIZE]),
    ),
    max_size=60,
)


@FAST
@given(
    ids=any_ids,
    in_segment=st.booleans(),
    slot=st.integers(0, 24),
    only=st.sampled_from([NO_KIND, 0, 1]),
    cycle=st.sampled_from([(10, 15), (1, 1), (2, 3)]),
)
def test_numba_demux_equals_numpy_on_arbitrary_streams_and_states(
    ids: list[int], in_segment: bool, slot: int, only: int, cycle: tuple[int, int]
) -> None:
    array = np.array(ids, np.int64)
    slot %= sum(cycle)
    args = (START, END, DEFAULT_VOCAB_SIZE, *cycle, in_segment, slot, only)
    want, got = reference.aqaa_demux(array, *args), fast.aqaa_demux(array, *args)
    assert [x.tolist() for x in got[:2]] == [x.tolist() for x in want[:2]]
    assert got[2:] == want[2:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_outside_segments_passes_and_segments_restart_the_schedule(backend: str) -> None:
    first = aqaa_mux(TEXT[:12], AUDIO[:20]).tolist()
    second = aqaa_mux(TEXT[50:53], AUDIO[100:102]).tolist()
    stream = [7, 8, *first, 9, *second, 10]
    text, audio = aqaa_demux(stream, backend=backend)  # type: ignore[arg-type]
    assert text.tolist() == [7, 8, *TEXT[:12], 9, *TEXT[50:53], 10]
    assert audio.tolist() == AUDIO[:20] + AUDIO[100:102]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("stream", "error", "message"),
    [
        ([START, 1, START], MarkerError, f"position 2: <audio_start> id {START} inside an open"),
        ([1, END], MarkerError, f"position 1: <audio_end> id {END} outside an audio segment"),
        ([1, 2, AUDIO[0]], MarkerError, "position 2: audio id 65536 outside an <audio_start>"),
        # text slot 1 holds audio, so the text stream has ended; text after it is misplaced
        ([START, 1, AUDIO[0], 2], TokenOrderError, "position 3: text id 2 after the text stream"),
        (
            [START, *TEXT[:10], AUDIO[0], 5, AUDIO[1]],
            TokenOrderError,
            "position 13: audio id 65537 after the audio stream",
        ),
        ([START, 1, VOCAB], TokenRangeError, f"position 2: id {VOCAB} is outside the vocabulary"),
        ([-4], TokenRangeError, f"position 0: id -4 is outside the vocabulary 0..{VOCAB - 1}"),
    ],
)
def test_misplaced_markers_and_ids_are_rejected_naming_position_and_id(
    backend: str, stream: list[int], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        AqaaDemuxer(backend=backend).push(stream)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_push_changes_no_state_and_positions_are_stream_wide(backend: str) -> None:
    demuxer = AqaaDemuxer(backend=backend)  # type: ignore[arg-type]
    demuxer.push([START, 1, 2])
    with pytest.raises(MarkerError, match="position 4: <audio_start>") as caught:
        demuxer.push([3, START])
    assert caught.value.position == 4 and caught.value.token_id == START
    assert demuxer.position == 3 and demuxer.in_segment
    text, audio = demuxer.push([3, END])
    assert (text.tolist(), audio.tolist()) == ([3], [])


def test_closing_inside_a_segment_is_a_marker_error() -> None:
    demuxer = AqaaDemuxer()
    demuxer.push([START, 1])
    with pytest.raises(MarkerError, match="position 2: stream closed inside an audio segment"):
        demuxer.close()
    with pytest.raises(MarkerError):
        aqaa_demux([START, 1, AUDIO[0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mux_rejects_audio_in_text_and_text_in_audio(backend: str) -> None:
    with pytest.raises(TokenRangeError, match=r"text_ids\[1\] = 65536 is not a text id"):
        aqaa_mux([1, AUDIO_ID_OFFSET], [], backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TokenRangeError, match=rf"text_ids\[0\] = {START} is not a text id"):
        aqaa_mux([START], [], backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TokenRangeError, match=r"audio_ids\[0\] = 5 is not an audio id"):
        aqaa_mux([], [5], backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_marker_ids_and_cycle_are_configurable(backend: str) -> None:
    cfg = AqaaConfig(audio_start_id=3, audio_end_id=4, text_per_cycle=2, audio_per_cycle=3)
    ids = aqaa_mux([10, 11, 12], AUDIO[:4], config=cfg, backend=backend)  # type: ignore[arg-type]
    assert ids.tolist() == [3, 10, 11, *AUDIO[:3], 12, AUDIO[3], 4]
    text, audio = aqaa_demux(ids, config=cfg, backend=backend)  # type: ignore[arg-type]
    assert (text.tolist(), audio.tolist()) == ([10, 11, 12], AUDIO[:4])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"audio_start_id": AUDIO_ID_OFFSET},
        {"audio_end_id": AUDIO_ID_END - 1},
        {"audio_start_id": 5, "audio_end_id": 5},
        {"vocab_size": 1000},
        {"audio_end_id": DEFAULT_VOCAB_SIZE},
        {"text_per_cycle": 0},
    ],
)
def test_config_rejects_markers_in_the_audio_range_or_colliding(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AqaaConfig(**kwargs)
