"""Affine coupling with swish networks, a zero-initialised last layer and a bounded scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Flow, centred, sum_except_batch

__all__ = ["ACTIVATIONS", "AffineCoupling", "ConvNet", "coupling_net", "coupling_log_scale",
           "LOG_SCALE_BOUND"]

LOG_SCALE_BOUND = 5.0  # a coupling shrinks a dimension by at most e^-5 (docs/training.md, "Stable training")


def coupling_log_scale(raw: Tensor, volume_preserving: bool = False) -> Tensor:
    """``log scale`` of an affine coupling from its net's raw output: ``log sigmoid(raw + 2)``
    (Glow's scale in (0, 1)), softly bounded below by ``−LOG_SCALE_BOUND``; centred over
    all but the batch dim when ``volume_preserving``.

    The bound is what keeps a Glow trainable at lr 1e-3: without it, an outlier batch drove
    a coupling's ``raw`` to −86 in the default mnist_digits pretraining (step ~1050), the
    scale underflowed to a float32 denormal (steps 20× slower) and then to 0 (log = −inf,
    NaN). Near the identity (``raw`` ≈ 0: −0.127) it changes the log scale by < 0.1 %.
    """
    log_scale = LOG_SCALE_BOUND * torch.tanh(F.logsigmoid(raw + 2.0) / LOG_SCALE_BOUND)
    return centred(log_scale, raw.dim() - 1) if volume_preserving else log_scale


class _Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


ACTIVATIONS = {"swish": _Swish, "relu": nn.ReLU}  # swish is the paper's; relu is Glow's (and cheaper)


class ConvNet(nn.Sequential):
    """3×3 conv → swish → 1×1 conv → swish → 3×3 conv: the coupling network for images.

    A plain ``Sequential`` (same parameters, same state dict) whose hidden activations
    are channels-last on CPU: for these shapes (few input and output channels around a
    wide hidden layer) oneDNN's convolutions then run about 1.4x faster forward and 1.3x
    forward + backward than in the default NCHW layout (16×16 pixels, batch 64, hidden
    128, 2 threads; see ``tools/bench_flow.py``). The output returns to the default
    layout. Other devices run the convolutions as they come.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def coupling_net(in_channels: int, out_channels: int, hidden: int, image: bool,
                 activation: str = "swish") -> nn.Sequential:
    """The network inside a coupling layer: swish (or ReLU) activations, last layer zero.

    For images: 3×3 conv → act → 1×1 conv → act → 3×3 conv (Glow, see
    :class:`ConvNet`); for vectors the same shape with linear layers. The last layer
    starts at zero so every coupling starts close to the identity (only the bounded
    scale ``sigmoid(2)`` remains). Swish is the TzK paper's choice (ReLU "converged more
    slowly"); ReLU costs less: swish and its gradient are about a quarter of a Glow
    training step on a CPU.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")
    act = ACTIVATIONS[activation]
    if image:
        layers = [
            nn.Conv2d(in_channels, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, hidden, 1), act(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        ]
    else:
        layers = [
            nn.Linear(in_channels, hidden), act(),
            nn.Linear(hidden, hidden), act(),
            nn.Linear(hidden, out_channels),
        ]
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return ConvNet(*layers) if image else nn.Sequential(*layers)


class AffineCoupling(Flow):
    """``z_b = (x_b + shift(x_a)) · scale(x_a)``, ``z_a = x_a`` (see :func:`coupling_log_scale`).

    The first ``C // 2`` channels ``x_a`` condition the affine map of the rest
    ``x_b``. The scale lies in (0, 1), which keeps training stable (Glow); a
    volume-preserving coupling divides it by its geometric mean.

    Arguments:
        channels: number of channels ``C`` (at least 2).
        hidden: width of the coupling network.
        image: whether inputs are ``(B, C, H, W)`` (conv net) or ``(B, C)``.
        cond_channels: channels of an optional conditioning tensor, concatenated
            to ``x_a`` (``(B, Cc)`` vectors are broadcast over pixels).
        activation: ``"swish"`` or ``"relu"`` in the network.
        volume_preserving: centre the log-scales of ``x_b`` per example (their product
            is 1, ``logdet = 0``); with one dimension in ``x_b`` the coupling is additive.
    """

    def __init__(self, channels: int, hidden: int, image: bool, cond_channels: int = 0,
                 activation: str = "swish", volume_preserving: bool = False):
        super().__init__()
        self.volume_preserving = volume_preserving
        if channels < 2:
            raise ValueError(f"affine coupling needs at least 2 channels, got {channels}")
        self.split = channels // 2
        self.net = coupling_net(self.split + cond_channels, 2 * (channels - self.split), hidden, image,
                                activation)

    def _shift_scale(self, x_a: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(shift, log scale)`` of ``x_b`` given ``x_a``."""
        h = x_a
        if cond is not None:
            if x_a.dim() == 4 and cond.dim() == 2:
                cond = cond[:, :, None, None].expand(-1, -1, *x_a.shape[2:])
            h = torch.cat([x_a, cond], dim=1)
        # the net may run in bf16 under autocast; the affine map and its logdet stay at x's precision
        shift, s = self.net(h).to(x_a.dtype).chunk(2, dim=1)
        return shift, coupling_log_scale(s, self.volume_preserving)

    def extra_repr(self) -> str:
        return "volume_preserving=True" if self.volume_preserving else ""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, log_scale = self._shift_scale(x_a, cond)
        z_b = (x_b + shift) * log_scale.exp()
        return torch.cat([x_a, z_b], dim=1), sum_except_batch(log_scale)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        z_a, z_b = z[:, : self.split], z[:, self.split :]
        shift, log_scale = self._shift_scale(z_a, cond)
        return torch.cat([z_a, z_b * (-log_scale).exp() - shift], dim=1)
