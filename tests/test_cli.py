"""The command line: help, one-line errors with exit status 2, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tzkgraph.cli import main

BAD = sorted(Path(__file__).parent.joinpath("fixtures", "bad_graphs").glob("*.yaml"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    return subprocess.run([sys.executable, "-m", "tzkgraph", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_help_runs():
    result = _cli("--help")
    assert result.returncode == 0 and "run" in result.stdout and "data" in result.stdout


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_every_malformed_graph_is_one_line_with_status_2(path, capsys):
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tzkgraph: error: ") and "\n" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["cycle", "not_yaml"])
def test_malformed_graph_from_the_shell(name):
    result = _cli("run", f"tests/fixtures/bad_graphs/{name}.yaml")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_file_and_bad_override(capsys):
    assert main(["run", "graphs/nope.yaml"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["run", "graphs/tiny.yaml", "--set", "train.batch_sise=3"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err
    assert main(["data", "cifar"]) == 2
    assert "unknown dataset 'cifar'" in capsys.readouterr().err


def test_unfinished_run_needs_resume_and_loses_nothing(tmp_path, capsys):
    args = ["run", "graphs/tiny.yaml", "--no-progress", "--set", "data.limit=200",
            "--set", f"train.out_dir={tmp_path}", "--set", f"train.cache_dir={tmp_path / 'c'}",
            "--set", "train.phases.0.steps=4", "--set", "train.phases.1.steps=2"]
    assert main(args) == 0
    checkpoint = tmp_path / "tiny" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    assert main(args) == 0  # finished: says so, changes nothing
    assert "already trained" in capsys.readouterr().out
    assert main(args + ["--resume", "--fresh"]) == 2
    assert checkpoint.read_bytes() == before


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path, capsys):
    run_dir = tmp_path / "tiny"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x04 definitely not a checkpoint")
    args = ["run", "graphs/tiny.yaml", "--no-progress", "--set", f"train.out_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a readable checkpoint" in err and "\n" not in err.strip()
    assert (run_dir / "checkpoint.pt").read_bytes().startswith(b"\x80\x04 definitely")
    assert main(["run", "graphs/tiny.yaml", "--set", f"train.out_dir={tmp_path / 'other'}",
                 "--set", f"train.init_from={tmp_path / 'none.pt'}"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
