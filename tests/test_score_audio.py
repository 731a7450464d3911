"""`duplexer score` on recordings built from real speech with the bot placed at known offsets."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from duplexer.cli import main
from duplexer.kernels.loudness import AUDIBLE_DBFS, audible_spans
from duplexer.protocols.wav import interleave_stereo, write_wav
from duplexer.sims.audio_timeline import (
    VAD_WINDOW_MS,
    TurnWindow,
    score_recording,
    speech_spans,
    user_turns_from_spans,
)
from duplexer.sims.turn_metrics import Speech, UserTurn, score_turns
from tests.conftest import SHARED

PHRASES = SHARED / "data" / "vap_phrases" / "audio"
needs_phrases = pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")
RATE_HZ = 24_000
ONSET_TOLERANCE_MS = 30.0


def phrase(name: str) -> np.ndarray:
    with wave.open(str(PHRASES / f"{name}.wav"), "rb") as wav:
        assert wav.getframerate() == RATE_HZ and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").copy()


def place(track: np.ndarray, clip: np.ndarray, at_ms: float) -> float:
    """Put ``clip`` into ``track`` at ``at_ms``; returns its true onset: its first audible sample."""
    at = int(at_ms * RATE_HZ / 1000)
    track[at : at + len(clip)] = clip
    return at_ms + audible_spans(clip, RATE_HZ, AUDIBLE_DBFS)[0][0]


def last_audible_ms(clip: np.ndarray, at_ms: float) -> float:
    return at_ms + audible_spans(clip, RATE_HZ, AUDIBLE_DBFS)[-1][1]


@needs_phrases
def test_score_reads_every_bot_onset_and_counts_the_talk_over(tmp_path: Path) -> None:
    user = np.zeros(16 * RATE_HZ, dtype=np.int16)
    bot = np.zeros_like(user)
    first = phrase("basketball_short_female_en-US-Wavenet-C")
    rest = phrase("work_short_male_en-US-Wavenet-A")
    talk_over = phrase("drive_short_female_en-US-Wavenet-E")
    reply = np.concatenate([np.zeros(RATE_HZ // 4, dtype=np.int16), phrase("bike_long_male_en-US-Wavenet-B")])
    second = phrase("student_short_female_en-US-Wavenet-F")
    closing = phrase("experiment_short_male_en-US-Wavenet-A")

    # Turn 1: a phrase, a 900 ms mid-turn pause, the rest of the turn. The bot comes in 300 ms
    # into the pause and runs on into the resumed speech: a talk-over.
    place(user, first, 500.0)
    pause_from = last_audible_ms(first, 500.0)
    resume_at = pause_from + 900.0
    onsets = [place(bot, talk_over, pause_from + 300.0)]
    assert last_audible_ms(talk_over, pause_from + 300.0) > resume_at + 200.0
    place(user, rest, resume_at)
    turn_end = last_audible_ms(rest, resume_at)
    # The reply: a TTS chunk that begins with 250 ms of digital silence, sent 500 ms after the turn.
    onsets.append(place(bot, reply, turn_end + 500.0))
    assert onsets[-1] >= turn_end + 750.0
    # Turn 2 after the reply, answered 700 ms after it ends.
    second_at = last_audible_ms(reply, turn_end + 500.0) + 2000.0
    place(user, second, second_at)
    onsets.append(place(bot, closing, last_audible_ms(second, second_at) + 700.0))

    wav = tmp_path / "conversation.wav"
    write_wav(wav, interleave_stereo(user, bot), RATE_HZ, channels=2)
    out = tmp_path / "score.json"
    assert main(["score", str(wav), "--json", str(out)]) == 0
    scored = json.loads(out.read_text())

    heard = [start for start, _ in scored["bot_speech_ms"]]
    for onset in onsets:
        nearest = min(heard, key=lambda h: abs(h - onset))
        assert abs(nearest - onset) <= ONSET_TOLERANCE_MS, (onset, heard)
    turns = [t for t in scored["per_turn"] if t["kind"] == "turn"]
    assert len(turns) == 2
    assert turns[0]["talk_over_count"] == 1 and turns[0]["pause_taken_over"]
    assert turns[0]["talk_over_ms"] > 200.0
    assert abs(turns[0]["response_latency_ms"] - (onsets[1] - turn_end)) <= ONSET_TOLERANCE_MS
    assert turns[1]["talk_over_count"] == 0
    assert scored["summary"]["talk_over"]["count"] == 1
    assert scored["summary"]["pause_takeover_rate"] == 1.0


@needs_phrases
def test_score_takes_the_two_sides_from_two_files_at_different_rates(tmp_path: Path) -> None:
    from duplexer.kernels.audio import float_to_pcm16, resample

    user = np.zeros(6 * RATE_HZ, dtype=np.int16)
    bot = np.zeros_like(user)
    place(user, phrase("live_short_female_en-US-Wavenet-C"), 500.0)
    end = last_audible_ms(phrase("live_short_female_en-US-Wavenet-C"), 500.0)
    onset = place(bot, phrase("bike_short_male_en-US-Wavenet-B"), end + 800.0)
    bot_16k = np.frombuffer(float_to_pcm16(resample(bot.astype(np.float32) / 32768.0, RATE_HZ, 16_000)), "<i2")
    write_wav(tmp_path / "user.wav", user.tobytes(), RATE_HZ)
    write_wav(tmp_path / "bot.wav", bot_16k.tobytes(), 16_000)
    out = tmp_path / "score.json"
    argv = ["score", "--user", str(tmp_path / "user.wav"), "--bot", str(tmp_path / "bot.wav"), "--json", str(out)]
    assert main(argv) == 0
    (turn,) = json.loads(out.read_text())["per_turn"]
    assert abs(turn["response_latency_ms"] - (onset - end)) <= ONSET_TOLERANCE_MS


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mono = tmp_path / "mono.wav"
    write_wav(mono, np.zeros(RATE_HZ, dtype=np.int16).tobytes(), RATE_HZ)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    bad_turns = tmp_path / "turns.json"
    bad_turns.write_text('[{"start_ms": 5}]')
    stereo = tmp_path / "stereo.wav"
    write_wav(stereo, interleave_stereo(np.zeros(100, np.int16), np.zeros(100, np.int16)), RATE_HZ, channels=2)
    for argv in (
        ["score", str(tmp_path / "missing.wav")],
        ["score", str(text)],
        ["score", str(mono)],
        ["score"],
        ["score", "--user", str(mono)],
        ["score", str(stereo), "--user", str(mono), "--bot", str(mono)],
        ["score", "--user", str(mono), "--bot", str(tmp_path / "missing.wav")],
        ["score", str(stereo), "--turns", str(bad_turns)],
        ["score", str(stereo), "--turns", str(tmp_path / "none.json")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("duplexer: error: ") and "\n" not in err, (argv, err)


def test_annotated_windows_group_spans_and_the_rule_finds_turns_and_backchannels() -> None:
    user = [(500.0, 1500.0), (1800.0, 2600.0), (5000.0, 5300.0), (8000.0, 9000.0)]
    bot = [(3200.0, 7000.0)]
    turns = user_turns_from_spans(user, bot)
    assert [(t.kind, t.segments) for t in turns] == [
        ("turn", ((500.0, 1500.0), (1800.0, 2600.0))),
        ("backchannel", ((5000.0, 5300.0),)),
        ("turn", ((8000.0, 9000.0),)),
    ]
    # The bot spoke and fell silent inside a short gap: the user's next words are a new turn.
    assert len(user_turns_from_spans([(0.0, 1000.0), (2000.0, 3000.0)], [(1200.0, 1800.0)])) == 2
    windows = [TurnWindow(400.0, 2700.0), TurnWindow(4900.0, 5400.0, "backchannel")]
    annotated = user_turns_from_spans(user, bot, windows)
    assert [(t.kind, len(t.segments)) for t in annotated] == [("turn", 2), ("backchannel", 1)]
    assert VAD_WINDOW_MS == 32.0


@needs_phrases
@pytest.mark.parametrize(("noise_dbfs", "onset_ms", "end_ms"), [(-55.0, 10.0, 10.0), (-30.0, 4 * 32.0, 250.0)])
def test_edges_are_exact_under_quiet_noise_and_the_vads_own_under_loud_noise(
    noise_dbfs: float, onset_ms: float, end_ms: float
) -> None:
    """Noise below the audible level leaves the edges sample-exact; noise above it makes the energy
    useless, and the VAD's edges (to a few windows) are kept instead of the noise's."""
    clip = phrase("psychology_short_male_en-US-Wavenet-B").astype(np.float32) / 32768.0
    track = np.zeros(4 * RATE_HZ, dtype=np.float32)
    rng = np.random.default_rng(1)
    track += rng.uniform(-1.0, 1.0, len(track)).astype(np.float32) * 10.0 ** (noise_dbfs / 20.0)
    at = RATE_HZ
    track[at : at + len(clip)] += clip
    truth = audible_spans(clip, RATE_HZ, AUDIBLE_DBFS)
    spans = speech_spans(track, RATE_HZ)
    assert spans, "no speech found"
    assert abs(spans[0][0] - (1000.0 + truth[0][0])) <= onset_ms
    assert abs(spans[-1][1] - (1000.0 + truth[-1][1])) <= end_ms


def test_help_explains_the_metrics_and_points_to_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert "docs/metrics.md" in text and "talk-over" in text and "latency" in text


@needs_phrases
def test_a_reply_cut_off_after_20_ms_over_the_resumed_user_is_heard_as_talk_over() -> None:
    """The end-of-turn timer fires just after the user resumes and the reply is stopped at once:
    20 ms of it are still played over the user, which the VAD cannot see but a listener hears."""
    user = np.zeros(6 * RATE_HZ, dtype=np.int16)
    bot = np.zeros_like(user)
    first = phrase("bike_short_female_en-US-Wavenet-C")
    place(user, first, 500.0)
    resume_at = last_audible_ms(first, 500.0) + 650.0
    place(user, phrase("live_short_male_en-US-Wavenet-B"), resume_at)
    burst_at = int((resume_at + 150.0) * RATE_HZ / 1000)
    reply = phrase("work_short_female_en-US-Wavenet-E")
    voiced = reply[int(audible_spans(reply, RATE_HZ, -20.0)[0][0] * RATE_HZ / 1000) :]
    bot[burst_at : burst_at + RATE_HZ // 50] = voiced[: RATE_HZ // 50]
    scored = score_recording(user, bot, RATE_HZ)
    (turn,) = scored.score.turns
    assert turn.talk_over_count == 1 and turn.pause_taken_over
    assert abs(turn.talk_over_ms - 20.0) <= 2.0


def test_a_bot_that_pauses_for_a_backchannel_and_resumes_was_not_stopped_by_it() -> None:
    backchannel = UserTurn(((1700.0, 2000.0),), "backchannel")
    paused = score_turns([backchannel], [Speech(0.0, 2100.0), Speech(2700.0, 5000.0)]).turns[0]
    stopped = score_turns([backchannel], [Speech(0.0, 2100.0)]).turns[0]
    cut_then_answered = score_turns([backchannel], [Speech(0.0, 2100.0), Speech(3400.0, 5000.0)]).turns[0]
    assert paused.backchannel_stopped_bot is False
    assert stopped.backchannel_stopped_bot is True
    assert cut_then_answered.backchannel_stopped_bot is True


def test_a_short_word_over_the_bot_that_the_user_goes_on_from_is_a_barge_in_not_a_backchannel() -> None:
    from duplexer.sims.audio_timeline import user_turns_from_spans

    bot = [(0.0, 2300.0)]  # the bot stops 300 ms after "Wait,"
    going_on = user_turns_from_spans([(2000.0, 2250.0), (2600.0, 4000.0)], bot)
    assert [(t.kind, t.segments) for t in going_on] == [("turn", ((2000.0, 2250.0), (2600.0, 4000.0)))]
    alone = user_turns_from_spans([(2000.0, 2250.0)], [(0.0, 5000.0)])
    assert [t.kind for t in alone] == ["backchannel"]


@needs_phrases
@pytest.mark.slow
def test_words_from_whisper_lie_inside_the_bots_speech(tmp_path: Path) -> None:
    user = np.zeros(6 * RATE_HZ, dtype=np.int16)
    bot = np.zeros_like(user)
    place(user, phrase("basketball_short_female_en-US-Wavenet-C"), 300.0)
    reply = phrase("bike_long_male_en-US-Wavenet-B")
    onset = place(bot, reply, 2500.0)
    wav = tmp_path / "conversation.wav"
    write_wav(wav, interleave_stereo(user, bot), RATE_HZ, channels=2)
    out = tmp_path / "score.json"
    assert main(["score", str(wav), "--words", "--json", str(out)]) == 0
    scored = json.loads(out.read_text())
    words = scored["bot_words"]
    assert len(words) >= 4
    end = last_audible_ms(reply, 2500.0)
    assert all(onset - 100.0 <= w["start_ms"] < w["end_ms"] <= end + 100.0 for w in words)
    assert scored["per_turn"][0]["takeover"]


def test_a_backchannel_soon_after_the_bot_starts_answering_is_not_talk_over() -> None:
    from duplexer.sims.audio_timeline import user_turns_from_spans
    from duplexer.sims.turn_metrics import Speech, score_turns

    turns = user_turns_from_spans([(0.0, 2000.0), (3000.0, 3400.0)], [(2600.0, 6000.0)])
    assert [t.kind for t in turns] == ["turn", "backchannel"]
    first = score_turns(turns, [Speech(2600.0, 6000.0)]).turns[0]
    assert first.response_latency_ms == 600.0 and first.talk_over_count == 0


def test_an_output_path_that_cannot_be_written_is_refused_before_scoring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "c.wav"
    write_wav(wav, interleave_stereo(np.zeros(RATE_HZ, np.int16), np.zeros(RATE_HZ, np.int16)), RATE_HZ, channels=2)
    (tmp_path / "afile").write_text("")
    for target in (tmp_path / "afile" / "out.json", tmp_path):
        assert main(["score", str(wav), "--json", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("duplexer: error:") and "\n" not in err and str(target) in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),
        ('[{"start_ms": NaN, "end_ms": 1}]', "NaN is not a number JSON allows"),
        ('[{"start_ms": 1' + "0" * 400 + ', "end_ms": 1}]', "digits"),
        ('[{"start_ms": 1e308, "end_ms": 1e309}]', "out of range"),
        ('[{"start_ms": 900, "end_ms": 100}]', "[0].end_ms: 100 must be after start_ms (900)"),
        ('{"start_ms": 1}', "expected a JSON list"),
        ("\xff\xfe", "not UTF-8"),
    ],
)
def test_a_hostile_turns_file_is_one_line_naming_it_and_exit_2(
    content: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stereo = tmp_path / "stereo.wav"
    write_wav(stereo, interleave_stereo(np.zeros(RATE_HZ, np.int16), np.zeros(RATE_HZ, np.int16)), RATE_HZ, channels=2)
    turns = tmp_path / "turns.json"
    turns.write_bytes(content.encode("latin-1"))
    assert main(["score", str(stereo), "--turns", str(turns)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"duplexer: error: {turns}: ") and expected in err, err[:300]
