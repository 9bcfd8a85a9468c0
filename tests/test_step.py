"""The training step's gradient clip (only outliers are cut, per tensor; it continues on resume)
and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from tzkgraph.core.errors import ConfigError
from tzkgraph.spec.load import load_spec
from tzkgraph.training.step import GradientClip, schedule


def _params(*sizes: int) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(n)) for n in sizes]


def _set_grads(params, norms) -> None:
    """Gives each parameter a gradient of the given norm (a fixed direction)."""
    for p, norm in zip(params, norms):
        direction = torch.ones_like(p) / math.sqrt(p.numel())
        p.grad = direction * norm


def _norms(params) -> list[float]:
    return [float(p.grad.norm()) for p in params]


def test_steady_growth_is_followed_not_clipped():
    # norms growing 8 % a step (x2000 over 100 steps, faster than a decoder Gaussian sharpening
    # on digits_quick) stay below 4x a geometric mean over ~10 steps: never clipped
    params = _params(3, 5)
    clip = GradientClip(4.0, params)
    for step in range(100):
        norms = [1.08 ** step, 10 * 1.08 ** step]
        _set_grads(params, norms)
        clip()
        assert torch.allclose(torch.tensor(_norms(params)), torch.tensor(norms), rtol=1e-5), step
    assert clip.read() == 0.0


def test_an_outlier_is_clipped_to_factor_times_the_scale_and_barely_moves_it():
    params = _params(4, 4)
    clip = GradientClip(4.0, params)
    for _ in range(30):
        _set_grads(params, [2.0, 3.0])
        clip()
    before = clip.scales.clone()
    assert torch.allclose(before, torch.tensor([2.0, 3.0]))
    _set_grads(params, [2000.0, 3.0])  # a 1000x outlier in the first tensor only
    total = clip()
    assert math.isclose(float(total), math.hypot(2000.0, 3.0), rel_tol=1e-6)  # the norm before clipping
    after = _norms(params)
    assert math.isclose(after[0], 8.0, rel_tol=1e-5)  # cut to 4 x its scale
    assert math.isclose(after[1], 3.0, rel_tol=1e-6)  # the other tensor untouched
    # the scale moves by at most factor ** rate (4 ** 0.1 = 1.149), not 1000 ** rate
    assert math.isclose(float(clip.scales[0]), 2.0 * 4.0 ** 0.1, rel_tol=1e-5)
    assert math.isclose(float(clip.scales[1]), 3.0, rel_tol=1e-6)
    assert math.isclose(clip.read(), 1 / 31 * 0.5, rel_tol=1e-6)  # one tensor of two, in one of 31 steps


def test_a_non_finite_step_leaves_the_scales_and_gradients_alone():
    params = _params(2, 2)
    clip = GradientClip(4.0, params)
    _set_grads(params, [1.0, 1.0])
    clip()
    params[0].grad = torch.tensor([float("inf"), 0.0])
    params[1].grad = torch.tensor([5.0, 0.0])
    total = clip()
    assert not torch.isfinite(total)
    assert torch.allclose(clip.scales, torch.tensor([1.0, 1.0]))
    assert float(params[1].grad[0]) == 5.0  # not scaled (the step is skipped anyway)


def test_tensors_without_gradient_keep_their_scale_and_start_at_their_first():
    params = _params(2, 2, 2)
    clip = GradientClip(4.0, params)
    _set_grads(params[:2], [1.0, 2.0])
    params[2].grad = None
    clip()
    assert torch.allclose(clip.scales, torch.tensor([1.0, 2.0, 0.0]))
    _set_grads(params, [1.0, 2.0, 50.0])  # the third's first gradient: its scale starts there
    clip()
    assert math.isclose(_norms(params)[2], 50.0, rel_tol=1e-6)
    assert math.isclose(float(clip.scales[2]), 50.0, rel_tol=1e-6)


def test_no_clipping_at_factor_zero_and_scales_continue_from_a_checkpoint():
    params = _params(3)
    off = GradientClip(0.0, params)
    _set_grads(params, [1.0])
    off()
    _set_grads(params, [1e6])
    off()
    assert math.isclose(_norms(params)[0], 1e6, rel_tol=1e-6) and off.read() == 0.0
    resumed = GradientClip(4.0, params, scales=torch.tensor([2.0]))
    _set_grads(params, [100.0])
    resumed()
    assert math.isclose(_norms(params)[0], 8.0, rel_tol=1e-5)
    # an older checkpoint's single global norm (shape ()) starts afresh instead
    assert GradientClip(4.0, _params(3, 3), scales=torch.tensor(5.0)).scales is None


def test_cosine_decay_follows_the_warm_up_down_to_zero_at_the_phase_end():
    factor = schedule(100, 1100, "cosine")
    assert factor(0) == pytest.approx(0.01) and factor(49) == pytest.approx(0.5)
    assert factor(99) == pytest.approx(1.0)
    assert factor(599) == pytest.approx(0.5, abs=1e-3)  # half way through the decay
    assert factor(1099) == pytest.approx(0.0, abs=1e-6)
    steps = [factor(s) for s in range(100, 1100)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    hold = schedule(100, 1100)  # "none": the warm-up, then the rate held
    assert hold(49) == pytest.approx(0.5) and hold(1099) == 1.0
    with pytest.raises(ValueError, match="unknown learning-rate decay 'linear'"):
        schedule(100, 1100, "linear")


def test_cooldown_holds_the_rate_then_falls_linearly_to_zero_over_the_last_fifth():
    factor = schedule(100, 1100, "cooldown")
    assert factor(49) == pytest.approx(0.5) and factor(99) == pytest.approx(1.0)
    assert factor(879) == 1.0                                 # held until 80 % of the phase
    assert factor(989) == pytest.approx(0.5, abs=1e-2)        # half way down
    assert factor(1099) == pytest.approx(0.0, abs=1e-6)
    steps = [factor(s) for s in range(880, 1100)]
    assert all(a > b for a, b in zip(steps, steps[1:]))
    # a phase shorter than its warm-up and cool-down together falls from the warm-up's end
    short = schedule(100, 110, "cooldown")
    assert short(99) == pytest.approx(1.0) and short(109) == pytest.approx(0.0, abs=1e-6)


def test_lr_decay_is_read_validated_and_left_out_of_the_identity_by_default():
    assert load_spec("graphs/tiny.yaml", ["train.lr_decay=cosine"]).train.lr_decay == "cosine"
    default = load_spec("graphs/tiny.yaml").train
    assert default.lr_decay == "none" and "lr_decay" not in default.to_dict()
    with pytest.raises(ConfigError, match=r"train.lr_decay: unknown learning-rate decay 'linear' "
                                          r"\(known: none, cosine, cooldown\)"):
        load_spec("graphs/tiny.yaml", ["train.lr_decay=linear"])
