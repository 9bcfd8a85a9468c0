"""Shape and element-wise flows: squeeze and the SymLog activation."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Flow, sum_except_batch

__all__ = ["Squeeze", "SymLog"]


class Squeeze(Flow):
    """``(B, C, H, W) → (B, 4C, H/2, W/2)``: each 2×2 block becomes 4 channels."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        z = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        b, c4, h2, w2 = z.shape
        x = z.view(b, c4 // 4, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c4 // 4, 2 * h2, 2 * w2)


class SymLog(Flow):
    """``z = sign(x) · log(1 + |x|)``, the workshop paper's invertible activation.

    ``log|dz/dx| = −log(1 + |x|)`` element-wise; the inverse is
    ``x = sign(z) · (exp|z| − 1)``.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.sign(x) * torch.log1p(x.abs()), -sum_except_batch(torch.log1p(x.abs()))

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return torch.sign(z) * torch.expm1(z.abs())
