"""A run never ends silently: status.json says how it ended; signals stop it with a checkpoint;
an outlier step with a non-finite gradient is skipped rather than ending the run."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from tzkgraph import cli
from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.core.errors import TzkError
from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.training.status import read_status
from tzkgraph.training.train import run

from helpers import tiny


def _status(tmp_path):
    return read_status(tmp_path / "runs" / "tiny")


def _at_step(monkeypatch, when: int, action) -> None:
    """Calls ``action(loss)`` on the objective of training step ``when`` (1-based) and uses what it returns."""
    original, count = GraphExecutor.loss, {"n": 0}

    def loss(self, index, step=0, modes=None):
        total, metrics = original(self, index, step, modes)
        count["n"] += 1
        if count["n"] == when:
            total = action(total)
        return total, metrics

    monkeypatch.setattr(GraphExecutor, "loss", loss)


def test_finished_and_stopped_runs_say_so(tmp_path):
    run(tiny(tmp_path), stop_after=12, progress=False, say=lambda _: None)
    status = _status(tmp_path)
    assert status["state"] == "stopped" and status["step"] == 12 and "--stop-after" in status["reason"]
    run(tiny(tmp_path), resume=True, progress=False, say=lambda _: None)
    status = _status(tmp_path)
    assert status["state"] == "finished" and status["step"] == 50 and status["phase"] == "conditional"


def test_a_resume_with_a_phase_shortened_below_its_step_moves_on(tmp_path):
    """Stopped at step 12 of a 20-step phase, resumed with that phase cut to 10 steps: the phase
    counts as done and the run goes on to the next (it used to loop forever)."""
    run(tiny(tmp_path), stop_after=12, progress=False, say=lambda _: None)
    said = []
    result = run(tiny(tmp_path, "train.phases.0.steps=10"), resume=True, progress=False, say=said.append)
    assert result.finished and _status(tmp_path)["state"] == "finished"
    assert any("12 of its 10 steps done already" in line for line in said)


def test_a_failed_run_leaves_its_reason(tmp_path):
    with pytest.raises(TzkError, match="NaN/Inf"):
        run(tiny(tmp_path, "train.lr=1e8", "train.warmup=0", "train.log_every=1"),
            progress=False, say=lambda _: None)
    status = _status(tmp_path)
    assert status["state"] == "failed" and "NaN/Inf" in status["reason"]


def test_missing_data_is_recorded(tmp_path, monkeypatch):
    from tzkgraph.training import train
    from tzkgraph.core.errors import DataError

    def missing(*args, **kwargs):
        raise DataError("mnist: not found under /nowhere (simulated)")

    monkeypatch.setattr(train, "load_graph_data", missing)
    with pytest.raises(TzkError):
        run(tiny(tmp_path), progress=False, say=lambda _: None)
    status = _status(tmp_path)
    assert status["state"] == "failed" and status["reason"] == "mnist: not found under /nowhere (simulated)"


def test_an_unexpected_error_is_recorded_too(tmp_path, monkeypatch):
    def boom(loss):
        raise RuntimeError("out of memory (simulated)")

    _at_step(monkeypatch, 7, boom)
    with pytest.raises(RuntimeError):
        run(tiny(tmp_path), progress=False, say=lambda _: None)
    status = _status(tmp_path)
    assert status["state"] == "failed" and status["reason"] == "RuntimeError: out of memory (simulated)"
    assert status["step"] == 6


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_with_a_checkpoint_that_resumes(tmp_path, monkeypatch, capsys, signum):
    def send(loss):
        os.kill(os.getpid(), signum)
        return loss

    _at_step(monkeypatch, 14, send)
    # a background job (CI's) may start with SIGINT ignored, which a run rightly leaves ignored:
    # give the signal its usual handler for this test
    previous = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    try:
        code = cli.main(["run", *tiny_args(tmp_path), "--no-progress"])
    finally:
        signal.signal(signum, previous)
    assert code == 128 + signum
    out = capsys.readouterr().out
    assert f"stopped by {signal.Signals(signum).name} at step 14" in out
    status = _status(tmp_path)
    assert status["state"] == "stopped" and signal.Signals(signum).name in status["reason"]
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert state["step"] == 14 and not state["finished"]
    monkeypatch.undo()
    assert cli.main(["run", *tiny_args(tmp_path), "--no-progress", "--resume"]) == 0
    assert _status(tmp_path)["state"] == "finished"


def test_an_ignored_signal_stays_ignored(tmp_path, monkeypatch):
    """Under nohup SIGHUP is ignored when the run starts: the run does not start listening to it."""
    def send(loss):
        os.kill(os.getpid(), signal.SIGHUP)
        return loss

    _at_step(monkeypatch, 14, send)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        result = run(tiny(tmp_path), progress=False, say=lambda _: None)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert result.finished and result.stopped_by is None


def tiny_args(tmp_path) -> list[str]:
    spec = tiny(tmp_path)
    quick = ["data.limit=1000", "train.log_every=5", "train.checkpoint_every=10",
             "train.phases.0.steps=30", "train.phases.1.steps=20",
             f"train.out_dir={tmp_path / 'runs'}", f"train.cache_dir={tmp_path / 'cache'}"]
    assert spec.train.out_dir == str(tmp_path / "runs")
    return ["graphs/tiny.yaml"] + [a for o in quick for a in ("--set", o)]


def test_a_step_with_a_non_finite_gradient_is_skipped(tmp_path, monkeypatch):
    """One poisoned step: not applied (weights stay finite), counted, and the run goes on."""
    _at_step(monkeypatch, 8, lambda loss: loss * float("nan"))
    result = run(tiny(tmp_path), progress=False, say=lambda _: None)
    assert result.finished and result.skipped_steps == 1
    lines = [json.loads(l) for l in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [l["skipped_steps"] for l in lines if l["step"] == 10] == [1]
    assert all(torch.isfinite(v).all() for v in load_checkpoint(
        tmp_path / "runs" / "tiny" / "checkpoint.pt")["model"].values() if v.is_floating_point())


def test_fused_adam_leaves_parameters_alone_when_told_the_gradient_is_not_finite():
    """What the skip relies on: fused Adam's found_inf (as GradScaler uses it) skips on the device."""
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([p], lr=0.1, fused=True)
    p.grad = torch.ones(3)
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    assert torch.equal(p.detach(), torch.ones(3))
    optimizer.found_inf = torch.zeros(())
    optimizer.step()
    assert not torch.equal(p.detach(), torch.ones(3))
