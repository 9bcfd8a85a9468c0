"""Training a graph end to end: losses, cache reuse, exact resume, online knowledge, NaN stop."""

from __future__ import annotations

import torch
import pytest

from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.core.errors import TzkError
from tzkgraph.training.train import run

from helpers import tiny

LONGER = ["train.phases.0.steps=120", "train.phases.1.steps=60"]  # for the losses to fall


def _mean(history, key, phase, first: bool, n: int = 4):
    values = [line[key] for line in history if line["phase"] == phase and key in line]
    return sum(values[:n] if first else values[-n:]) / n


def _weights(tmp_path):
    return load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")["model"]


def test_tiny_trains_end_to_end_with_falling_losses(tmp_path):
    result = run(tiny(tmp_path, *LONGER, "train.sample_every=90"), progress=False, say=lambda _: None)
    assert result.finished and result.step == 180
    grids = sorted(p.name for p in (tmp_path / "runs" / "tiny" / "samples").glob("*.png"))
    assert "step-90-images-mnist.png" in grids and "step-180-digits-3.png" in grids
    assert result.caches_built == ["images/t_flow"]
    history = result.history
    # the t-flow alone: its NLL over 1024 dims falls by hundreds of nats
    assert _mean(history, "loss", "pretrain", first=False) < _mean(history, "loss", "pretrain", first=True) - 300
    # then the knowledge on the frozen, cached flow: the summed objective falls; the digit
    # stage observes the image stage's codes as data, which spread as that stage learns
    # (so its density of them falls), while what its knowledge adds, log p_enc − log p(t),
    # rises (measured: −17.8 → −15.6 nats)
    assert _mean(history, "loss", "conditional", False) < _mean(history, "loss", "conditional", True) - 20
    gain = lambda first: _mean(history, "digits/log_p_enc", "conditional", first) \
        - _mean(history, "digits/log_p_t", "conditional", first)
    assert gain(False) > gain(True) + 1.0
    state = _weights(tmp_path)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_second_run_reuses_the_cache_and_changed_weights_rebuild_it(tmp_path):
    run(tiny(tmp_path), progress=False, say=lambda _: None)
    again = run(tiny(tmp_path), fresh=True, progress=False, say=lambda _: None)
    assert again.caches_built == []  # same seed, same frozen flow: nothing recomputed
    other = run(tiny(tmp_path, "seed=1"), fresh=True, progress=False, say=lambda _: None)
    assert other.caches_built == ["images/t_flow"]  # other frozen weights: rebuilt

    cache = tmp_path / "cache" / "tiny" / "images.t_flow.h5"
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    rebuilt = run(tiny(tmp_path, "seed=1"), fresh=True, progress=False, say=lambda _: None)
    assert rebuilt.caches_built == ["images/t_flow"]


def test_resume_continues_exactly(tmp_path):
    whole = run(tiny(tmp_path / "a"), progress=False, say=lambda _: None)
    for line in whole.history:  # throughput between log lines, global batch of 32
        assert line["ms_per_step"] > 0
        assert line["images_per_s"] == pytest.approx(32 * 1e3 / line["ms_per_step"])
    spec = tiny(tmp_path / "b")
    stopped = run(spec, stop_after=37, progress=False, say=lambda _: None)  # mid conditional phase
    assert not stopped.finished and stopped.step == 37
    saved = load_checkpoint(tmp_path / "b" / "runs" / "tiny" / "checkpoint.pt")
    assert saved["step"] == 37 and saved["optimizer"]["state"]

    with pytest.raises(TzkError, match="--resume"):
        run(spec, progress=False, say=lambda _: None)  # refuses to silently restart
    resumed = run(spec, resume=True, progress=False, say=lambda _: None)
    assert resumed.finished and resumed.step == whole.step
    assert resumed.history[0]["step"] == 40  # continues the step count
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same steps, optimizer and RNG state


def test_metric_lines_show_the_image_stage_in_bits_per_dim(tmp_path):
    import json
    import math

    from tzkgraph.model.density import bits_per_dim

    spec = tiny(tmp_path, "train.phases.0.steps=10", "train.phases.1.steps=5")
    result = run(spec, progress=False, say=lambda _: None)
    lines = [json.loads(l) for l in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]  # (not the weight average's lines)
    assert lines and {line["phase"] for line in lines} == {"pretrain", "conditional"}
    dims = math.prod(spec.t_shape("images"))  # 1×32×32
    for line in lines:
        assert 0 < line["images/bpd"] < 16
        assert line["images/bpd"] == bits_per_dim(line["images/bound"], dims, spec.data.image.bits)
        assert "digits/bpd" not in line  # the digit stage observes codes, not images
    assert [line["images/bpd"] for line in result.history if "loss" in line] == \
        [line["images/bpd"] for line in lines]


def test_added_knowledge_trains_alone_and_keeps_old_weights(tmp_path):
    run(tiny(tmp_path), progress=False, say=lambda _: None)
    before = _weights(tmp_path)
    grown = tiny(tmp_path, "stages.digits.knowledge.5={code_dim: 2, present: {label: 5}}")
    result = run(grown, progress=False, say=lambda _: None)
    assert result.trained_parts == ["digits/5"]
    assert result.caches_built == ["images/codes"]  # the frozen image stage's code posteriors
    after = _weights(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    new = [k for k in after if k not in before]
    assert new and any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in new)
    assert result.step == 50 + 20  # the pretrain phase had nothing new and was skipped


def test_divergence_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
    run(tiny(tmp_path), progress=False, say=lambda _: None)
    good = (tmp_path / "runs" / "tiny" / "checkpoint.pt").read_bytes()
    with pytest.raises(TzkError, match="NaN/Inf"):
        run(tiny(tmp_path, "train.lr=1e8", "train.warmup=0", "train.log_every=1"), fresh=True,
            progress=False, say=lambda _: None)
    assert (tmp_path / "runs" / "tiny" / "checkpoint.pt").read_bytes() == good


def test_changed_graph_with_no_new_part_is_refused(tmp_path):
    run(tiny(tmp_path), progress=False, say=lambda _: None)
    ckpt = tmp_path / "runs" / "tiny" / "checkpoint.pt"
    before = ckpt.read_bytes()
    with pytest.raises(TzkError, match="different graph"):
        run(tiny(tmp_path, "stages.images.flow.hidden=8"), progress=False, say=lambda _: None)
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("trains", [["digits"], ["images/mnist", "digits"]])
def test_cached_and_recomputed_frozen_parts_give_the_same_loss(tmp_path, trains):
    from tzkgraph.data.dataset import load_graph_data
    from tzkgraph.graph.executor import GraphExecutor
    from tzkgraph.graph.plan import plan_phase
    from tzkgraph.graph.model import TzKGraph

    spec = tiny(tmp_path)
    model = TzKGraph(spec)
    data = load_graph_data(spec.data)
    plan = plan_phase(spec, frozenset(p for p in spec.atomic_parts() if p.split("/")[0] in trains
                                      or p in trains))
    assert plan.cached_codes if trains == ["digits"] else plan.cached_flow
    model.eval()
    losses = []
    for use_cache in (True, False):
        executor = GraphExecutor(model, data, plan, tmp_path / "cache", progress=False, use_cache=use_cache)
        torch.manual_seed(0)
        losses.append(executor.loss(torch.arange(16))[0])
    assert torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-4)
