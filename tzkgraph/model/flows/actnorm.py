"""ActNorm: a per-channel affine layer with data-dependent initialisation."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .base import Flow, centred

__all__ = ["ActNorm", "actnorm_log_scale"]


MIN_INIT_STD = 1e-3  # below this batch spread a channel counts as constant at initialisation


def actnorm_log_scale(log_scale: Tensor, volume_preserving: bool) -> Tensor:
    """The log-scale an ActNorm applies, ``(..., C)``: its parameter, centred when volume-preserving.

    One definition for :class:`ActNorm` and the stacked layers (:mod:`tzkgraph.model.stacked`).
    """
    return centred(log_scale) if volume_preserving else log_scale


class ActNorm(Flow):
    """Per-channel ``z = (x + bias) * exp(log_scale)`` (Glow).

    On the first ``forward`` in training mode the parameters are set so that
    the batch's output has zero mean and unit variance per channel (a channel
    whose batch spread is below ``MIN_INIT_STD`` is only centred). Whether
    that happened is the buffer ``initialized``: it is saved in the
    ``state_dict``, so a reloaded model is never re-initialised.

    Works on ``(B, C)`` vectors and ``(B, C, H, W)`` images (channel dim 1).

    Arguments:
        channels: number of channels ``C``.
        eps: added to the batch standard deviation at initialisation.
        volume_preserving: use ``log_scale`` less its mean, so ``logdet = 0``: the layer
            standardises channels against each other but cannot change the volume.
    """

    def __init__(self, channels: int, eps: float = 1e-6, volume_preserving: bool = False):
        super().__init__()
        self.volume_preserving = volume_preserving
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps
        self._known_initialized = False  # host-side copy: no device sync per step

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # re-read the loaded buffer once

    def extra_repr(self) -> str:
        return f"{self.log_scale.numel()}" + (", volume_preserving=True" if self.volume_preserving else "")

    def effective_log_scale(self) -> Tensor:
        """The log-scale the layer applies: ``log_scale``, centred when volume-preserving."""
        return actnorm_log_scale(self.log_scale, self.volume_preserving)

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Sets bias and scale from a batch ``x`` so its output is standardised.

        Under ``torch.distributed`` the statistics are those of the global
        batch (averaged over processes, which hold equal shares), so every
        process starts from the same parameters.
        """
        dims = [d for d in range(x.dim()) if d != 1]
        distributed = dist.is_available() and dist.is_initialized()

        def global_mean(v: Tensor) -> Tensor:
            v = v.mean(dim=dims)
            if distributed:
                dist.all_reduce(v)
                v = v / dist.get_world_size()
            return v

        mean = global_mean(x)
        if x.numel() > x.shape[1] or distributed:
            std = global_mean((x - mean.view(1, -1, *([1] * (x.dim() - 2)))) ** 2).sqrt()
            # A channel with no spread (a child observing its parent's posterior means,
            # all equal at the parent's zero-initialised start) would get a scale of
            # 1/eps and blow up the moment the inputs move: keep it at scale 1 instead.
            std = torch.where(std < MIN_INIT_STD, torch.ones_like(std), std)
        else:  # a single vector: no spread to measure
            std = torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._known_initialized = True

    def settled(self) -> bool:
        """Whether the next forward leaves the parameters alone: initialised, or in eval mode.

        Reads the ``initialized`` buffer (a device sync) only until it is known to be set,
        once after construction or ``load_state_dict``; then answers from the host.
        """
        if not self.training or self._known_initialized:
            return True
        self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.settled():
            self.initialize(x)
        log_scale = self.effective_log_scale()
        z = (x + self._view(self.bias, x)) * self._view(log_scale, x).exp()
        spatial = x[0, 0].numel()  # H·W for images, 1 for vectors
        logdet = (log_scale.sum() * spatial).expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z * self._view(-self.effective_log_scale(), z).exp() - self._view(self.bias, z)
