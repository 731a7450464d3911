"""`duplexer eval fdb` on Full-Duplex-Bench trees built from the shared VAP speech, with scripted engines."""

from __future__ import annotations

import json
import os
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from duplexer.cli import main
from duplexer.kernels.audio import resample
from duplexer.kernels.loudness import audible_spans
from duplexer.sims.fdb import FdbError, Sample, backchannel_jsd, discover, score_sample, task_name
from duplexer.sims.turn_metrics import Word
from tests.conftest import SHARED, voiced

PHRASES = SHARED / "data" / "vap_phrases" / "audio"
FDB_REPO = Path(os.environ.get("DUPLEXER_FDB_REPO", "/nonexistent"))
"""A local git clone of Full-Duplex-Bench (its example outputs are FDB's, never copied here); the test
that scores them runs only where one is given."""
needs_phrases = pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        return np.frombuffer(frames, "<i2"), wav.getframerate(), wav.getnchannels()


def phrase(index: int, rate_hz: int) -> tuple[np.ndarray, str]:
    """A VAP phrase cut to its audible part, at ``rate_hz``; and its text."""
    path = sorted(PHRASES.glob("*.wav"))[index]
    audio, source_hz, _ = read_wav(path)
    x = audio.astype(np.float32) / 32768.0
    start_ms, end_ms = audible_spans(x, source_hz)[0][0], audible_spans(x, source_hz)[-1][1]
    x = x[int(start_ms * source_hz / 1000) : int(end_ms * source_hz / 1000)]
    return resample(x, source_hz, rate_hz), path.with_suffix(".txt").read_text().strip()


def place(parts: list[tuple[float, np.ndarray]], length_s: float, rate_hz: int) -> np.ndarray:
    out = np.zeros(int(length_s * rate_hz), dtype=np.float32)
    for at_s, clip in parts:
        a = int(at_s * rate_hz)
        out[a : a + len(clip)] = clip[: len(out) - a]
    return out


def build_tree(root: Path) -> int:
    """8 pause, 7 turn-taking and 7 interruption samples; annotations from where the speech was put."""
    n = 0
    for i in range(22):
        rate = 16_000 if i % 5 == 0 else 24_000
        first, text1 = phrase(2 * i, rate)
        second, text2 = phrase(2 * i + 1, rate)
        d1, d2 = len(first) / rate, len(second) / rate
        folder = root / ("pause", "turn", "interrupt")[i % 3] / f"{i}"
        if i % 3 == 0:  # a mid-turn pause of 1 s; as in FDB's pause set the input ends with the speech, so
            # any bot speech in the output is a takeover of the pause, not an answer to the finished turn
            audio = place([(0.3, first), (0.3 + d1 + 1.0, second)], 0.3 + d1 + 1.0 + d2 + 0.12, rate)
            note = [{"text": "[PAUSE]", "timestamp": [round(0.3 + d1, 3), round(0.3 + d1 + 1.0, 3)]}]
            (folder / "pause.json").parent.mkdir(parents=True, exist_ok=True)
            (folder / "pause.json").write_text(json.dumps(note))
        elif i % 3 == 1:  # one turn, then room for the answer
            audio = place([(0.3, first)], 0.3 + d1 + 3.0, rate)
            note = [{"text": "[TURN-TAKING]", "timestamp": [round(0.3 + d1, 3), round(0.3 + d1 + 0.4, 3)]}]
            (folder / "turn_taking.json").parent.mkdir(parents=True, exist_ok=True)
            (folder / "turn_taking.json").write_text(json.dumps(note))
        else:  # a question, then an interruption while the bot answers
            at = 0.3 + d1 + 2.0
            audio = place([(0.3, first), (at, second)], at + d2 + 3.0, rate)
            note = [{"context": text1, "interrupt": text2, "timestamp": [round(at, 3), round(at + d2, 3)]}]
            (folder / "interrupt.json").parent.mkdir(parents=True, exist_ok=True)
            (folder / "interrupt.json").write_text(json.dumps(note))
        write_wav(folder / "input.wav", audio, rate)
        n += 1
    return n


def tasks_of(out: Path) -> dict[str, dict]:
    return {t["task"]: t for t in json.loads((out / "fdb.json").read_text())["tasks"]}


@needs_phrases
def test_eval_fdb_runs_a_vap_tree_and_scores_it_again_the_same(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "tree"
    count = build_tree(root)
    assert count >= 20
    argv = ["eval", "fdb", str(root), "--engines", "scripted", "--concurrency", str(count), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    for task in ("pause_handling", "smooth_turn_taking", "user_interruption"):
        assert task in printed
    for folder in sorted(p.parent for p in root.rglob("input.wav")):
        inp, in_rate, _ = read_wav(folder / "input.wav")
        out, out_rate, channels = read_wav(folder / "output.wav")
        assert (channels, out_rate, len(out)) == (1, in_rate, len(inp))
        words = json.loads((folder / "output.json").read_text())
        assert isinstance(words["text"], str)
        assert all(len(c["timestamp"]) == 2 and c["timestamp"][0] <= c["timestamp"][1] for c in words["chunks"])
    run = tasks_of(tmp_path / "run")
    assert set(run) == {"pause_handling", "smooth_turn_taking", "user_interruption"}
    assert all(t["errors"] == 0 and t["tor"] is not None for t in run.values())
    # The scripted bot answers every turn: it takes the turn and its latency is a real figure.
    assert run["smooth_turn_taking"]["tor"] == 1.0
    assert 0.0 < run["smooth_turn_taking"]["latency_s"] < 3.0
    assert run["user_interruption"]["latency_s"] is not None
    assert sum(1 for p in root.rglob("output.json") if json.loads(p.read_text())["chunks"]) >= count - 1
    for name in ("fdb_samples.csv", "fdb_tasks.csv", "fdb.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert main([*argv, "--score-only", "--out", str(tmp_path / "again")]) == 0
    assert tasks_of(tmp_path / "again") == run


def write_words(folder: Path, words: list[tuple[float, float]]) -> None:
    chunks = [{"text": f"w{i}", "timestamp": [s, e]} for i, (s, e) in enumerate(words)]
    (folder / "output.json").write_text(json.dumps({"text": " ".join(c["text"] for c in chunks), "chunks": chunks}))


def sample(
    root: Path, name: str, note: tuple[str, list] | None, words: list[tuple[float, float]], length_s: float = 6.0
) -> None:
    folder = root / name
    write_wav(folder / "input.wav", np.zeros(int(length_s * 16_000)), 16_000)
    speech = voiced(16_000)
    output = np.zeros(int(length_s * 16_000), dtype=np.float32)
    for s, e in words:
        output[int(s * 16_000) : int(e * 16_000)] = speech[int(s * 16_000) : int(e * 16_000)]
    write_wav(folder / "output.wav", output, 16_000)
    write_words(folder, words)
    if note is not None:
        (folder / note[0]).write_text(json.dumps(note[1]))


TURN = [{"text": "[TURN-TAKING]", "timestamp": [2.0, 2.4]}]
INTERRUPT = [{"context": "c", "interrupt": "i", "timestamp": [1.0, 2.0]}]


def test_score_only_gives_fdb_figures_for_outputs_at_known_offsets(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    # Pause: three words in 0.6 s do not take the turn; two words spanning 1.2 s do.
    sample(root, "p1", ("pause.json", [{"text": "[PAUSE]", "timestamp": [1, 2]}]), [(1.2, 1.4), (1.4, 1.6), (1.6, 1.8)])
    sample(root, "p2", ("pause.json", [{"text": "[PAUSE]", "timestamp": [1, 2]}]), [(1.2, 1.5), (2.1, 2.4)])
    # Turn-taking: answer 0.5 s after the turn end; one starting early (latency 0); one too short.
    sample(root, "t1", ("turn_taking.json", TURN), [(2.5, 2.9), (3.0, 3.4), (3.5, 3.9), (4.0, 4.4)])
    sample(root, "t2", ("turn_taking.json", TURN), [(1.8, 2.2), (2.3, 3.1)])
    sample(root, "t3", ("turn_taking.json", TURN), [(2.5, 2.7), (2.8, 3.0)])
    # Interruption: words before its end are not counted; the first after it comes 0.3 s later.
    sample(root, "i1", ("interrupt.json", INTERRUPT), [(0.2, 0.5), (0.6, 1.9), (2.3, 2.8), (2.9, 3.5)])
    sample(root, "i2", ("interrupt.json", INTERRUPT), [(0.2, 0.9), (1.0, 1.5), (1.6, 1.9)])
    # Backchannel (no annotation): two short hums of one word each; then one of 3.5 s takes the turn.
    sample(root, "10", None, [(1.0, 1.5), (3.0, 3.5)])
    sample(root, "11", None, [(1.0, 1.5), (2.0, 5.5)])
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"10": [1 / 30] * 30, "11": [1 / 30] * 30}))
    out = tmp_path / "out"
    assert main(["eval", "fdb", str(root), "--score-only", "--out", str(out), "--quiet", "--icc-gt", str(gt)]) == 0
    tasks = tasks_of(out)
    assert tasks["pause_handling"]["tor"] == 0.5
    assert tasks["smooth_turn_taking"]["tor"] == pytest.approx(2 / 3, abs=1e-3)
    assert tasks["smooth_turn_taking"]["latency_s"] == pytest.approx(0.25)
    assert tasks["user_interruption"]["tor"] == 0.5
    assert tasks["user_interruption"]["latency_s"] == pytest.approx(0.3)
    rows = {r["sample"]: r for r in json.loads((out / "fdb.json").read_text())["samples"]}
    assert (rows["10"]["tor"], rows["10"]["backchannels"]) == (0, 2)
    assert rows["10"]["backchannel_per_s"] == pytest.approx(2 / 6.0, abs=1e-3)
    assert (rows["11"]["tor"], rows["11"]["backchannels"]) == (1, 1)
    assert 0.0 < rows["10"]["jsd"] < 1.0
    only = tmp_path / "only"
    assert main(["eval", "fdb", str(root), "--score-only", "--out", str(only), "--quiet", "--task", "turn_taking"]) == 0
    assert set(tasks_of(only)) == {"smooth_turn_taking"}


def test_backchannel_jsd_is_zero_for_the_same_density_and_one_without_backchannels() -> None:
    assert backchannel_jsd([], 5000.0, np.ones(10)) == 1.0
    assert backchannel_jsd([(0.0, 5000.0)], 5000.0, np.ones(7)) == pytest.approx(0.0, abs=1e-4)


def test_a_null_word_end_takes_its_start_and_tasks_have_short_names(tmp_path: Path) -> None:
    sample(tmp_path, "p", ("pause.json", []), [])
    (tmp_path / "p" / "output.json").write_text(
        json.dumps(
            {"text": "a b", "chunks": [{"text": "a", "timestamp": [0.5, 0.6]}, {"text": "b", "timestamp": [1.6, None]}]}
        )
    )
    [found] = discover(tmp_path, [task_name("pause")])
    from duplexer.sims.fdb import words_from_chunks

    words = words_from_chunks(json.loads((tmp_path / "p" / "output.json").read_text()), tmp_path)
    assert score_sample(found, words).tor == 1  # span 0.5 -> 1.6 s
    with pytest.raises(FdbError):
        task_name("nonsense")
    assert score_sample(Sample(tmp_path / "p", "pause_handling", "p"), [Word("a", 0, 100)]).tor == 0


def test_bad_input_is_one_line_and_exit_2_and_a_bad_sample_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["eval", "fdb", str(tmp_path / "missing"), "--score-only"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["eval", "fdb", str(tmp_path / "empty"), "--score-only"]) == 2
    root = tmp_path / "tree"
    sample(root, "good", ("turn_taking.json", TURN), [(2.5, 2.9), (3.0, 3.4), (3.5, 3.9), (4.0, 4.4)])
    sample(root, "bad", ("turn_taking.json", TURN), [(2.5, 2.9)])
    (root / "bad" / "output.wav").write_bytes(b"not a wav")
    sample(root, "badjson", ("turn_taking.json", TURN), [(2.5, 2.9)])
    (root / "badjson" / "turn_taking.json").write_text("{")
    capsys.readouterr()
    argv = ["eval", "fdb", str(root), "--score-only", "--quiet", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "skipped bad:" in err and "skipped badjson:" in err
    assert tasks_of(tmp_path / "out")["smooth_turn_taking"]["errors"] == 2
    assert tasks_of(tmp_path / "out")["smooth_turn_taking"]["tor"] == 1.0
    assert main([*argv, "--judge-url", "http://localhost:1/v1"]) == 2
    assert main([*argv, "--task", "nonsense"]) == 2
    assert main([*argv, "--policy", "nonsense"]) == 2
    (root / "good" / "output.wav").write_bytes(b"")
    assert main(argv) == 2  # every sample bad
    for line in capsys.readouterr().err.splitlines():
        if "error" in line:
            assert line.startswith("duplexer: error: ")


@pytest.mark.slow
@needs_phrases
def test_whisper_word_times_fall_inside_the_speech() -> None:
    from duplexer.actors.models.packages import ModelPackageMissing

    try:
        from duplexer.actors.models.whisper_asr import WhisperAsr

        asr = WhisperAsr(window="full")
    except ModelPackageMissing as exc:
        pytest.skip(str(exc))
    clip, text = phrase(0, 16_000)
    audio = place([(1.0, clip), (2.0 + len(clip) / 16_000, clip)], 3.0 + 2 * len(clip) / 16_000, 16_000)
    words = asr.transcribe_words(audio)
    assert len(words) >= len(text.split())
    speech = audible_spans(audio, 16_000, max_gap_ms=300)
    assert len(speech) == 2
    for _, start_ms, end_ms in words:
        assert start_ms <= end_ms
        assert any(s - 200 <= start_ms and end_ms <= e + 200 for s, e in speech)
    assert abs(words[0][1] - speech[0][0]) < 300  # the first word does not stretch over the silence before it
    assert abs(words[len(words) // 2][1] - speech[1][0]) < 300


@pytest.mark.slow
@pytest.mark.skipif(not FDB_REPO.exists(), reason="set DUPLEXER_FDB_REPO to a clone of Full-Duplex-Bench")
@pytest.mark.parametrize("words_from", ["fdb_output_json", "whisper"])
def test_score_only_on_fdb_example_outputs_gives_fdb_figures(tmp_path: Path, words_from: str) -> None:
    """FDB's three published example outputs: its evaluators give TOR 1, 1, 1 and 1.35 s / 4.08 s."""
    archive = subprocess.run(
        ["git", "-C", str(FDB_REPO), "archive", "HEAD", "v1_v1.5/evaluation/example_data"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "x", "-C", str(tmp_path)], input=archive, check=True)
    root = tmp_path / "v1_v1.5" / "evaluation" / "example_data"
    tolerance_s = 1e-6
    if words_from == "whisper":
        from duplexer.actors.models.packages import ModelPackageMissing, require_module, whisper_model_path

        try:
            require_module("faster_whisper", "faster-whisper", "Whisper ASR")
            whisper_model_path()
        except ModelPackageMissing as exc:
            pytest.skip(str(exc))
        for path in root.rglob("output.json"):
            path.unlink()
        tolerance_s = 0.15  # another ASR places the first word a little differently
    assert main(["eval", "fdb", str(root), "--score-only", "--quiet", "--out", str(tmp_path / "out")]) == 0
    tasks = tasks_of(tmp_path / "out")
    assert [tasks[t]["tor"] for t in ("pause_handling", "smooth_turn_taking", "user_interruption")] == [1.0] * 3
    assert tasks["smooth_turn_taking"]["latency_s"] == pytest.approx(1.35, abs=tolerance_s)
    assert tasks["user_interruption"]["latency_s"] == pytest.approx(4.08, abs=tolerance_s)


def test_whisper_words_are_trimmed_to_audible_audio_and_unheard_ones_dropped() -> None:
    from duplexer.actors.models.whisper_asr import trim_to_audible

    spans = [(1000.0, 2000.0), (2100.0, 2600.0)]
    words = [("so", 0.0, 1300.0), ("there", 1900.0, 2300.0), ("ghost", 3000.0, 4000.0)]
    assert trim_to_audible(words, spans) == [("so", 1000.0, 1300.0), ("there", 1900.0, 2300.0)]


def test_an_unwritable_out_folder_or_a_non_numeric_icc_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "tree"
    sample(root, "t1", ("turn_taking.json", TURN), [(2.5, 2.9), (3.0, 3.4)])
    (tmp_path / "afile").write_text("")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"1": "abc"}))
    for extra in (["--out", str(tmp_path / "afile")], ["--out", str(tmp_path / "o"), "--icc-gt", str(gt)]):
        assert main(["eval", "fdb", str(root), "--score-only", "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("duplexer: error:") and "\n" not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),
        ('{"1": [NaN]}', "NaN is not a number JSON allows"),
        ('{"1": [1' + "0" * 400 + "]}", "digits"),
    ],
)
def test_a_hostile_icc_file_is_one_line_naming_it_and_exit_2(
    content: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "tree"
    sample(root, "t1", ("turn_taking.json", TURN), [(2.5, 2.9), (3.0, 3.4)])
    gt = tmp_path / "gt.json"
    gt.write_text(content)
    assert (
        main(["eval", "fdb", str(root), "--score-only", "--quiet", "--out", str(tmp_path / "o"), "--icc-gt", str(gt)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"duplexer: error: {gt}: ") and expected in err, err[:300]


def test_a_deeply_nested_annotation_is_an_fdb_error_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    sample(root, "t1", ("turn_taking.json", TURN), [(2.5, 2.9), (3.0, 3.4)])
    (folder,) = [p.parent for p in root.rglob("turn_taking.json")]
    (folder / "turn_taking.json").write_text("[" * 100_000 + "]" * 100_000)
    (found,) = discover(root, [])
    with pytest.raises(FdbError, match=r"turn_taking\.json: the file is nested 100000 levels deep"):
        score_sample(found, [Word("hi", 3000.0, 3200.0)])
