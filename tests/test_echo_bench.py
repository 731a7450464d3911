"""The echo simulator (duplexer.sims.echo_path) and `duplexer bench echo`, in small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from duplexer.sims.echo_path import (
    BOT_LEVEL_DBFS,
    ROOMS,
    USER_LEVEL_DBFS,
    EchoDevice,
    EchoPath,
    active_rms,
    at_level,
    render_mic,
    room_impulse_response,
)
from tests.test_echo_cancel import vap

RATE = 16_000


def test_rooms_differ_in_reverberation_and_start_with_the_direct_path() -> None:
    tails = {}
    for name, room in ROOMS.items():
        rir = room_impulse_response(room, 0.08)
        assert abs(np.sum(rir**2) - 1.0) < 1e-9
        peak = int(np.argmax(np.abs(rir)))
        assert peak < 0.01 * RATE  # the loudspeaker 8 cm away: the direct path comes first
        tails[name] = float(np.sum(rir[peak + int(0.05 * RATE) :] ** 2))
    assert tails["office"] < tails["living"] < tails["hall"]


@pytest.mark.parametrize("echo_db", [0.0, -10.0])
def test_echo_level_delay_and_drift(echo_db: float) -> None:
    bot = at_level(np.concatenate(vap("Wavenet-A", 3)), BOT_LEVEL_DBFS)
    path = EchoPath(room=ROOMS["living"], delay_ms=200.0, drift_ppm=100.0, echo_db=echo_db, noise_db=-300.0)
    mic, echo = render_mic(path, bot, np.zeros_like(bot))
    np.testing.assert_allclose(mic, echo, atol=1e-12)
    level = 20 * np.log10(active_rms(echo))
    assert abs(level - (USER_LEVEL_DBFS + echo_db)) < 3.0
    # The echo of a click arrives after the device delay (plus the 8 cm and the RIR's filter delay),
    # and later as the drift adds up.
    clicks = np.zeros(20 * RATE)
    clicks[RATE] = clicks[19 * RATE] = 0.5
    _, echo = render_mic(path, clicks, np.zeros_like(clicks))
    first = np.argmax(np.abs(echo[RATE : 3 * RATE])) / RATE * 1000
    last = np.argmax(np.abs(echo[19 * RATE :])) / RATE * 1000
    assert 200 <= first <= 206
    assert abs((last - first) - 18.0 * 100e-6 * 1000) < 0.3  # 100 ppm over 18 s: 1.8 ms later


def test_streaming_device_matches_whole_signals() -> None:
    rng = np.random.default_rng(0)
    played = 0.1 * rng.standard_normal(RATE)
    user = 0.05 * rng.standard_normal(RATE)
    path = EchoPath(room=ROOMS["office"], delay_ms=40.0)
    whole, _ = render_mic(path, played, user, seed=3, frame_samples=RATE)
    device = EchoDevice(path, seed=3)
    frames = [device.mic_frame(played[i : i + 320], user[i : i + 320]) for i in range(0, RATE, 320)]
    # Same echo and user; the noise differs only in how its random draws are cut into frames.
    assert abs(10 * np.log10(np.sum((np.concatenate(frames) - whole) ** 2) / np.sum(whole**2))) > 40


@pytest.mark.slow
def test_bench_echo_small_run_prints_its_table_and_aec_beats_no_aec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from duplexer.bench.echo import main

    log = tmp_path / "bench.md"
    code = main(["--rooms", "office", "--delays", "150", "--levels", "0", "--replies", "4", "--log", str(log)])
    assert code == 0
    text = log.read_text()
    assert "duplexer bench echo" in text and "ERLE total dB" in text and "self-interrupt on" in text
    rows = [line for line in text.splitlines() if line.startswith("| office/150ms/+0dB")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    replies, erle_total = int(cells[1]), float(cells[3])
    self_off, self_on = (int(c.split()[0]) for c in (cells[4], cells[5]))
    assert replies == 4
    assert self_on < self_off  # the bot stops itself without the canceller, far less with it
    assert erle_total > 15.0
    assert "real-time factor" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--rooms", "moon"], ["--delays", "fast"], ["--delays", "900"], ["--replies", "0"], ["--drift-ppm", "nan"]],
)
def test_bench_echo_bad_options_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from duplexer.bench.echo import main

    assert main([*argv, "--no-log"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duplexer: error:")
