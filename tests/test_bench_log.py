"""Where `duplexer bench ...` puts its figures: ``--log PATH``, ``--no-log``, and the default, which appends
to docs/benchmarks.md only inside a checkout of this repository."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from duplexer.bench.log import checkout_bench_log
from duplexer.cli import BENCHMARKS
from tests.conftest import REPO

QUICK_BUS = ("bench", "bus", "--events", "5000", "--repeats", "1")
FIGURE = "publish->deliver p99"


def duplexer_cli(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "duplexer.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def checkout_log_bytes() -> bytes | None:
    log = checkout_bench_log()
    return None if log is None else log.read_bytes()


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_takes_log_and_no_log(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module_name, func_name, _ = BENCHMARKS[name]
    with pytest.raises(SystemExit) as caught:
        getattr(importlib.import_module(module_name), func_name)(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "--log PATH" in out and "--no-log" in out


def test_log_path_gets_the_figures_with_the_command(tmp_path: Path) -> None:
    log = tmp_path / "figures.md"
    result = duplexer_cli(*QUICK_BUS, "--log", str(log), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert FIGURE in result.stdout
    text = log.read_text()
    assert text.startswith("# Benchmarks") and FIGURE in text
    assert f"duplexer bench bus --events 5000 --repeats 1 --log {log}" in text


def test_no_log_prints_the_figures_and_writes_nothing(tmp_path: Path) -> None:
    before = checkout_log_bytes()
    result = duplexer_cli(*QUICK_BUS, "--no-log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert FIGURE in result.stdout
    assert list(tmp_path.iterdir()) == []
    assert checkout_log_bytes() == before


def test_log_and_no_log_together_exit_2(tmp_path: Path) -> None:
    result = duplexer_cli(*QUICK_BUS, "--no-log", "--log", str(tmp_path / "x.md"), cwd=tmp_path)
    assert result.returncode == 2 and "not allowed with" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_outside_a_checkout_the_default_prints_only(tmp_path: Path) -> None:
    """An installed copy (a duplexer package with no repository around it) writes no log anywhere."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "duplexer", site / "duplexer", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    before = checkout_log_bytes()
    result = duplexer_cli(*QUICK_BUS, cwd=work, pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert FIGURE in result.stdout
    assert list(work.iterdir()) == [] and sorted(p.name for p in site.iterdir()) == ["duplexer"]
    assert checkout_log_bytes() == before


def test_the_default_log_is_the_checkouts_own(tmp_path: Path) -> None:
    package = tmp_path / "repo" / "duplexer"
    package.mkdir(parents=True)
    assert checkout_bench_log(package) is None
    (tmp_path / "repo" / ".git").mkdir()
    assert checkout_bench_log(package) is None  # a checkout without the log: nothing to append to
    log = tmp_path / "repo" / "docs" / "benchmarks.md"
    log.parent.mkdir()
    log.write_text("# Benchmarks\n")
    assert checkout_bench_log(package) == log
