"""The networks of a TzK stage: regressors and discriminators on images and vectors."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flows import ActNorm

__all__ = ["encoder_net", "mlp", "GaussianHead"]

LOG_STD_BOUND = 5.0  # σ ∈ (e^-5, e^5): no overflow, still sharp enough for codes


class _Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class _InputNorm(nn.Module):
    """ActNorm used as a plain layer: standardises a net's input at the first batch."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = ActNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)[0]


def _zero_last(net: nn.Sequential) -> nn.Sequential:
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Input ActNorm → Linear → swish → Linear → swish → Linear (zero-initialised)."""
    return _zero_last(nn.Sequential(
        _InputNorm(in_dim),
        nn.Linear(in_dim, hidden), _Swish(),
        nn.Linear(hidden, hidden), _Swish(),
        nn.Linear(hidden, out_dim),
    ))


def _image_net(in_shape: Sequence[int], hidden: int, out_dim: int) -> nn.Sequential:
    """3×3 conv, then stride-2 3×3 convs down to ≤ 4×4, then a zero-initialised linear map.

    The paper's "3×3 conv, then alternating squeeze and conv, then linear"
    regressor, with strided convolutions doing the squeezing.
    """
    c, h, w = in_shape
    layers: list[nn.Module] = [_InputNorm(c), nn.Conv2d(c, hidden, 3, padding=1), _Swish()]
    while h > 4 or w > 4:
        layers += [nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), _Swish()]
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    layers += [nn.Flatten(), nn.Linear(hidden * h * w, out_dim)]
    return _zero_last(nn.Sequential(*layers))


def encoder_net(t_shape: Sequence[int], hidden: int, out_dim: int) -> nn.Sequential:
    """A network on an observation ``t``: conv net for ``(C, H, W)``, MLP for ``(D,)``."""
    if len(t_shape) == 3:
        return _image_net(t_shape, hidden, out_dim)
    return mlp(t_shape[0], hidden, out_dim)


class GaussianHead(nn.Module):
    """Wraps a net with ``2·dim`` outputs into ``(mean, log_std)``, each ``(B, dim)``.

    ``log_std`` is softly bounded to ``±5``. With the net's last layer at
    zero, the head starts as the standard normal.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.net(x).chunk(2, dim=1)
        return mean, LOG_STD_BOUND * torch.tanh(raw / LOG_STD_BOUND)
