"""One training step, and what a phase starts with: optimizer, schedule, gradient clip, objective.

``tzkgraph run`` takes its steps with :func:`train_step`, and so does ``tools/bench_cache.py``,
so the benchmark times the step the runs take.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.training.average import WeightAverage
from tzkgraph.spec.types import LR_DECAYS

COOLDOWN_SHARE = 0.2   # train.lr_decay: cooldown lowers the rate over this share of a phase

__all__ = ["BatchSampler", "GradientClip", "Phase", "objective_on", "schedule", "start_phase", "train_step",
           "warmup"]


class BatchSampler:
    """Draws a training batch's example indices, uniformly with replacement, on the device.

    With ``labelled_share`` (semi-supervised, ``data.labelled``), that share of each batch
    is drawn from the examples whose labels are known and the rest from all examples, in
    random positions: with 100 labels per digit among 60,000 images a uniform batch of 64
    holds one labelled image. Labelled examples then weigh more than their share of the
    data, as in the semi-supervised VAE's weighting of its labelled term.

    Arguments:
        n: the number of examples.
        batch_size: the global batch (every process draws it alike and takes its share).
        generator: the run's data generator (checkpointed with the run).
        label_known: ``(N,)`` bool, whose labels are known (``GraphData.label_known``).
        labelled_share: the share of a batch drawn from those (``train.labelled_share``).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator,
                 label_known: Tensor | None = None, labelled_share: float | None = None):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.known = None
        self.n_labelled = 0
        if labelled_share and label_known is not None:
            self.known = label_known.nonzero().squeeze(1)
            self.n_labelled = min(batch_size, max(1, round(labelled_share * batch_size)))

    def __call__(self) -> Tensor:
        device = self.generator.device
        if self.known is None or not len(self.known):
            return torch.randint(self.n, (self.batch_size,), device=device, generator=self.generator)
        labelled = self.known[torch.randint(len(self.known), (self.n_labelled,), device=device,
                                            generator=self.generator)]
        rest = torch.randint(self.n, (self.batch_size - self.n_labelled,), device=device,
                             generator=self.generator)
        order = torch.randperm(self.batch_size, device=device, generator=self.generator)
        return torch.cat([labelled, rest])[order]


class GradientClip:
    """Clips each parameter tensor's gradient at ``factor`` times its running scale, on the device.

    Per tensor, so that an outlier in one net (a decoder Gaussian sharpening) does not
    throttle the others (the classifier beside it): one global norm did, and on the quick
    digit graph it cost up to 0.4 of digit accuracy (docs/training.md, "Stable training"); Adam scales
    each tensor on its own anyway. Scale-free: only outliers are cut. The scale is a
    geometric running mean, an exponential average of the log-norms after clipping over
    about ``1/rate`` steps, started at a tensor's first gradient norm. Geometric, because
    norms grow by orders of magnitude as Gaussians sharpen (×300 in 100 steps there), which
    an arithmetic mean over 100 steps could not follow; after clipping, so that one outlier
    moves the scale by at most ``factor ** rate`` (×1.15) — which is also the fastest
    steady growth it follows unclipped. A step whose total norm is not finite leaves the
    scales alone (that step is skipped, see :func:`train_step`). The scales are kept in
    checkpoints, so a resumed run clips as an uninterrupted one.

    Arguments:
        factor: the multiple (0: no clipping).
        params: the parameters, in a fixed order (the scales follow it).
        scales: the running scales to continue from, ``(len(params),)``, if any (any other
            shape, e.g. an older checkpoint's single norm, starts afresh).
        rate: the weight of each new step in the log-domain average.
    """

    def __init__(self, factor: float, params: list[Tensor], scales: Tensor | None = None,
                 rate: float = 0.1):
        self.factor, self.params, self.rate = factor, list(params), rate
        self.scales: Tensor | None = None
        self.load_scales(scales)
        self._clipped: Tensor | None = None  # Σ over steps of the fraction of tensors clipped
        self._steps = 0  # steps since the last read

    def __call__(self) -> Tensor:
        """Clips the gradients in place; returns their total norm before clipping."""
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in have]
        if not grads:
            return torch.zeros(())
        norms = torch.stack(torch._foreach_norm(grads)).float()
        total = norms.norm()
        if not self.factor:
            return total
        if self.scales is None:
            self.scales = torch.zeros(len(self.params), device=norms.device)
        index = None if len(have) == len(self.params) else torch.tensor(have, device=norms.device)
        scales = self.scales if index is None else self.scales[index]
        finite = torch.isfinite(total)
        started = scales > 0
        coef = torch.where(started & finite, (self.factor * scales / (norms + 1e-30)).clamp(max=1.0),
                           torch.ones_like(norms))
        torch._foreach_mul_(grads, list(coef.to(grads[0].dtype).unbind()))
        log_scale = torch.log(scales.clamp(min=1e-30))
        log_kept = torch.log((norms * coef).clamp(min=1e-30))
        updated = torch.where(started, torch.exp(log_scale + self.rate * (log_kept - log_scale)), norms)
        updated = torch.where(finite, updated, scales).detach()
        self.scales = updated if index is None else self.scales.index_copy(0, index, updated)
        cut = (coef < 1).sum() / len(self.params)
        self._clipped = cut if self._clipped is None else self._clipped + cut
        self._steps += 1
        return total

    def load_scales(self, scales: Tensor | None) -> None:
        """Continues from saved running scales; ``None`` or another shape (an older
        checkpoint's single norm) leaves the clip to start afresh."""
        if scales is not None and scales.shape == (len(self.params),):
            device = self.params[0].device if self.params else None
            self.scales = scales.to(device)

    def scale(self) -> float:
        """The running scales as one global norm (a host sync; for the log)."""
        return float(self.scales.norm()) if self.scales is not None else float("nan")

    def read(self) -> float:
        """The mean fraction of tensors clipped per step since the last read (a host sync)."""
        fraction = 0.0 if self._clipped is None else float(self._clipped) / self._steps
        self._clipped, self._steps = None, 0
        return fraction


def warmup(steps: int) -> Callable[[int], float]:
    """The learning-rate factor of a linear warm-up over ``steps`` steps."""
    return lambda step: min(1.0, (step + 1) / steps) if steps > 0 else 1.0


def schedule(warmup_steps: int, phase_steps: int, decay: str = "none") -> Callable[[int], float]:
    """A phase's learning-rate factor at its step ``step``: the warm-up, then ``decay``.

    ``"none"`` holds the rate after the warm-up. The others end a phase on small steps
    rather than wherever its last full-rate step happened to land (``train.lr_decay``;
    docs/training.md): ``"cosine"`` lowers it along half a cosine to 0 at the phase's last
    step; ``"cooldown"`` holds it, then lowers it linearly to 0 over the phase's last
    ``COOLDOWN_SHARE`` of steps (warmup-stable-decay: Hägele et al. 2024 find a 20 %
    linear cool-down matches cosine, and a phase keeps its full rate for longer).
    """
    rise = warmup(warmup_steps)
    if decay == "none":
        return rise
    if decay not in LR_DECAYS:
        raise ValueError(f"unknown learning-rate decay {decay!r} (known: {', '.join(LR_DECAYS)})")
    start = warmup_steps if decay == "cosine" else max(warmup_steps, round(phase_steps * (1 - COOLDOWN_SHARE)))
    span = max(1, phase_steps - start)

    def factor(step: int) -> float:
        done = min(1.0, max(0.0, (step + 1 - start) / span))
        fall = 0.5 * (1.0 + math.cos(math.pi * done)) if decay == "cosine" else 1.0 - done
        return rise(step) * fall
    return factor


class Objective(nn.Module):
    """A phase's objective as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, executor: GraphExecutor):
        super().__init__()
        self.executor = executor
        self.model = executor.model  # registers the parameters

    def forward(self, index: Tensor, step: int, modes: dict[str, str]):
        return self.executor.loss(index, step, modes)


@dataclass
class Phase:
    """What a phase trains with: the objective, Adam, its schedule, the gradient clip, and the
    running average of its weights (``train.ema``; ``None`` when off)."""

    executor: GraphExecutor
    objective: nn.Module  # the executor's loss as a module (wrapped for DistributedDataParallel)
    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.LambdaLR
    clip: GradientClip
    amp: bool = False  # bf16 autocast
    average: WeightAverage | None = None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of it, to continue the phase exactly."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "clip_scales": None if self.clip.scales is None else self.clip.scales.cpu(),
                "average": None if self.average is None else self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.clip.load_scales(state.get("clip_scales"))
        if self.average is not None and state.get("average") is not None:
            self.average.load_state_dict(state["average"])


def start_phase(executor: GraphExecutor, params: list[Tensor], *, lr: float, warmup_steps: int,
                clip_grad: float, amp: bool = False, wrap: Callable[[nn.Module], nn.Module] | None = None,
                adam: dict[str, Any] | None = None, phase_steps: int = 0, lr_decay: str = "none",
                ema: float = 0.0) -> Phase:
    """A phase's objective over ``executor`` and its optimizer state, fresh.

    Arguments:
        executor: the phase's summed objective.
        params: what trains.
        lr, warmup_steps, clip_grad: ``train.lr``, ``train.warmup``, ``train.clip_grad``.
        phase_steps, lr_decay: the phase's length and ``train.lr_decay`` (:func:`schedule`).
        ema: ``train.ema``, the decay of the weights' running average (0: none).
        amp: run the objective under bf16 autocast.
        wrap: wraps the objective (DistributedDataParallel), if given.
        adam: Adam's options; default ``fused=True``: one kernel over all tensors instead of
            a loop per tensor (about 5× faster on CPU), which also skips, on the device, a
            step whose gradient is not finite (``found_inf``).
    """
    objective: nn.Module = Objective(executor)
    if wrap is not None:
        objective = wrap(objective)
    optimizer = torch.optim.Adam(params, lr=lr, **({"fused": True} if adam is None else adam))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(warmup_steps, phase_steps, lr_decay))
    average = WeightAverage(params, ema) if ema else None
    return Phase(executor, objective, optimizer, scheduler, GradientClip(clip_grad, params), amp, average)


def train_step(phase: Phase, index: Tensor, step: int = 0, modes: dict[str, str] | None = None,
               loss_fn: Callable[..., Any] | None = None) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """One step: the objective on the batch ``index``, backward, clip, Adam, the schedule, the
    weight average (if any).

    A batch whose gradient is not finite is skipped on the device, not applied (no host
    sync): the weights stay finite.

    Arguments:
        phase: from :func:`start_phase`.
        index: the batch's example indices (this process's share).
        step: the global step (dequantisation noise depends on it).
        modes: the code sources per stage (``executor.draw_modes()``); drawn if not given.
        loss_fn: the objective to call instead of ``phase.objective`` (its compiled form).

    Returns:
        ``(loss, metrics, skipped)``: the loss (detached), the objective's metrics, and 1.0
        where the step was skipped (0-d, on the device).
    """
    if modes is None:
        modes = phase.executor.draw_modes()
    autocast = (torch.autocast(index.device.type, dtype=torch.bfloat16) if phase.amp
                else contextlib.nullcontext())
    with autocast:
        loss, metrics = (loss_fn or phase.objective)(index, step, modes)
    phase.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = phase.clip()
    skipped = (~torch.isfinite(norm)).to(torch.float32)
    if any(group.get("fused") for group in phase.optimizer.param_groups):
        phase.optimizer.found_inf = skipped
        phase.optimizer.step()
    else:  # unfused Adam has no found_inf: decide on the host
        if not bool(skipped):
            phase.optimizer.step()
    phase.scheduler.step()
    if phase.average is not None:  # (a skipped step left the weights as they were)
        phase.average.update()
    return loss.detach(), metrics, skipped


@torch.no_grad()
def objective_on(phase: Phase, batches: list[Tensor], step: int) -> float:
    """The phase's objective at its current weights, averaged over ``batches`` (a host sync).

    Every call draws the same noise (codes, dequantisation, code sources), so two weight
    settings compare on equal terms; the run's random state is left as it was.
    """
    devices = [batches[0].device] if batches[0].device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        total = sum(float(phase.executor.loss(index, step, phase.executor.draw_modes())[0]) for index in batches)
    return total / len(batches)
