"""Semi-supervised knowledge: `data.labelled: N` keeps N labels per class; elsewhere e is
unobserved and marginalised, and what the unknown labels are cannot change the objective."""

from __future__ import annotations

import pytest
import torch

from tzkgraph.data.dataset import first_per_class, load_graph_data
from tzkgraph.core.errors import ConfigError
from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.graph.plan import plan_phase
from tzkgraph.graph.model import TzKGraph
from tzkgraph.spec.present import PresentRule

from tzkgraph.training.step import BatchSampler
from tzkgraph.training.train import run

from helpers import randomize, tiny


def test_first_per_class_keeps_n_of_each_label():
    labels = torch.tensor([3, 1, 3, 3, 1, 0, 3])
    assert first_per_class(labels, 2).tolist() == [True, True, True, False, True, True, False]


def test_labelled_marks_only_label_rules_unobserved(tmp_path):
    spec = tiny(tmp_path, "data.labelled=5")
    data = load_graph_data(spec.data, "train")
    assert int(data.label_known.sum()) == 50  # 5 per digit
    assert data.observed(PresentRule(source="mnist")).all()  # a source is always known
    digit = data.observed(PresentRule(label=3))
    assert torch.equal(digit, data.label_known)
    assert load_graph_data(spec.data, "test").label_known is None  # evaluation sees every label


def test_a_source_rule_that_fails_makes_e_known_whatever_the_label():
    from tzkgraph.data.dataset import GraphData

    data = GraphData(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]),
                     torch.tensor([3, 4, 3, 4]), ["mnist", "fashion"], 8,
                     label_known=torch.tensor([True, False, False, False]))
    rule = PresentRule(source="mnist", label=3)
    assert data.observed(rule).tolist() == [True, False, True, True]


def _loss(spec, labels_of_unlabelled: int | None):
    torch.manual_seed(0)
    model = randomize(TzKGraph(spec), 0.2)  # zero-initialised heads would ignore e altogether
    model.eval()
    data = load_graph_data(spec.data, "train")
    if labels_of_unlabelled is not None:  # overwrite every unknown label (all, when all are known)
        unknown = torch.ones_like(data.labels, dtype=torch.bool) if data.label_known is None \
            else ~data.label_known
        data.labels[unknown] = labels_of_unlabelled
    plan = plan_phase(spec, frozenset(p for p in spec.atomic_parts() if p.startswith("digits")))
    executor = GraphExecutor(model, data, plan, "unused", progress=False, use_cache=False)
    torch.manual_seed(0)
    return executor.loss(torch.arange(64), modes={"digits": "encoder"})[0]


def test_unknown_labels_do_not_reach_the_objective(tmp_path):
    spec = tiny(tmp_path, "data.labelled=3")
    torch.manual_seed(0)
    a, b = _loss(spec, 0), _loss(spec, 4)
    torch.testing.assert_close(a, b)
    full = tiny(tmp_path)
    assert not torch.allclose(_loss(full, None), _loss(full, 4))  # (while known labels do)


def test_labelled_share_draws_that_share_of_every_batch_from_labelled_examples():
    known = torch.zeros(1000, dtype=torch.bool)
    known[torch.arange(0, 1000, 100)] = True  # 10 labelled examples of 1000
    draw = BatchSampler(1000, 64, torch.Generator().manual_seed(0), known, labelled_share=0.5)
    batches = torch.stack([draw() for _ in range(200)])
    share = known[batches].float().mean(1)  # 32 drawn labelled + the ~1% of the rest that are
    assert share.min() >= 0.5 and abs(float(share.mean()) - (0.5 + 0.5 * 0.01)) < 0.01
    assert len(batches.unique()) > 990  # the rest from every example (6400 draws of 1000)
    # positions are random: the first half of a batch is no more labelled than the second
    assert abs(float(known[batches[:, :32]].float().mean() - known[batches[:, 32:]].float().mean())) < 0.05
    plain = BatchSampler(1000, 64, torch.Generator().manual_seed(0))
    assert torch.equal(plain(), torch.randint(1000, (64,), generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("overrides, message", [
    (["train.labelled_share=0.5"], "train.labelled_share: needs data.labelled"),
    (["data.labelled=5", "train.labelled_share=1"], "train.labelled_share: expected a number < 1"),
    (["data.labelled=5", "train.labelled_share=0"], "train.labelled_share: expected a number > 0"),
])
def test_labelled_share_is_validated(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(tmp_path, *overrides)


def test_a_labelled_share_run_trains(tmp_path):
    result = run(tiny(tmp_path, "data.labelled=5", "train.labelled_share=0.5"), progress=False,
                 say=lambda _: None)
    assert result.finished and result.skipped_steps == 0


def test_an_edge_by_label_is_refused_with_labelled(tmp_path):
    from tzkgraph.spec.load import parse_spec
    import yaml

    raw = yaml.safe_load(open("graphs/tiny.yaml"))
    raw["data"]["labelled"] = 10
    raw["stages"]["digits"]["observe"] = "images/mnist"
    raw["stages"]["more"] = {"observe": "digits/3", "knowledge": {"x": {"code_dim": 2, "present": {"label": 3}}}}
    with pytest.raises(ConfigError, match="stages.more.observe: digits/3 is present by label"):
        parse_spec(raw)



def _encoder_gradient(spec, trainable: tuple[str, ...], tweak=lambda model: None) -> list[torch.Tensor]:
    """The gradient of a phase's summed objective on the images/mnist encoder posterior's weights."""
    torch.manual_seed(0)
    model = randomize(TzKGraph(spec), 0.2)
    tweak(model)
    data = load_graph_data(spec.data, "train")
    plan = plan_phase(spec, frozenset(p for p in spec.atomic_parts() if p.startswith(trainable)))
    executor = GraphExecutor(model, data, plan, "unused", progress=False, use_cache=False)
    torch.manual_seed(0)
    total, _ = executor.loss(torch.arange(16), modes={"images": "encoder", "digits": "encoder"})
    weights = list(model.stages["images"].knowledge["mnist"].encoder_posterior[1].parameters())
    return torch.autograd.grad(total, weights)


def test_a_childs_objective_reaches_its_parents_encoder(tmp_path):
    """The child is the prior of the parent's code (docs/objective.md): training both, the
    parent's encoder posterior gets the child's gradient too; a frozen child still does (it
    stays that code's prior), a child training alone sends nothing."""
    alone = _encoder_gradient(tiny(tmp_path), ("images/mnist",))
    both = _encoder_gradient(tiny(tmp_path), ("images/mnist", "digits"))
    assert not all(torch.allclose(a, b) for a, b in zip(alone, both))


def test_a_child_observes_the_draw_the_parents_decoder_used(tmp_path, monkeypatch):
    """The digit stage's t is the reparameterised draw c ~ q(c | e=1, t) of images/mnist,
    with gradient, and it differs with the noise."""
    spec = tiny(tmp_path)
    torch.manual_seed(0)
    model = randomize(TzKGraph(spec), 0.2)
    data = load_graph_data(spec.data, "train")
    plan = plan_phase(spec, frozenset(p for p in spec.atomic_parts() if p.startswith(("images/mnist", "digits"))))
    executor = GraphExecutor(model, data, plan, tmp_path / "cache", progress=False, use_cache=False)
    seen = []
    digits = model.stages["digits"]
    real = digits.loss
    monkeypatch.setattr(digits, "loss", lambda t, *a, **k: seen.append(t) or real(t, *a, **k))
    for seed in (1, 2):
        torch.manual_seed(seed)
        executor.loss(torch.arange(16))
    assert all(t.requires_grad for t in seen)
    assert not torch.allclose(seen[0], seen[1])


def test_a_failing_stage_is_named(tmp_path, monkeypatch):
    spec = tiny(tmp_path)
    model = TzKGraph(spec)
    plan = plan_phase(spec, frozenset(spec.atomic_parts()))
    executor = GraphExecutor(model, load_graph_data(spec.data, "train"), plan, "unused",
                             progress=False, use_cache=False)

    def fails(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(model.stages["digits"], "loss", fails)
    with pytest.raises(RuntimeError, match="^stage 'digits': mat1 and mat2 shapes cannot be multiplied$"):
        executor.loss(torch.arange(8))
