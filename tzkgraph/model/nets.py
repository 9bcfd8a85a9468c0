"""The networks of a TzK stage: regressors and discriminators on images and vectors, per knowledge type."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tzkgraph.model.density import gaussian_log_prob
from tzkgraph.model.flows import ActNorm, VectorFlow

__all__ = ["encoder_net", "mlp", "GaussianHead", "Knowledge", "float32", "gaussian_params"]

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
        return gaussian_params(self.net(x))


def gaussian_params(out: Tensor) -> tuple[Tensor, Tensor]:
    """A net's ``2·dim`` outputs (last dim) as ``(mean, log_std)``, ``log_std`` softly bounded to ``±5``.

    One definition for :class:`GaussianHead` and the stacked layers.
    """
    mean, raw = out.chunk(2, dim=-1)
    return mean, LOG_STD_BOUND * torch.tanh(raw / LOG_STD_BOUND)


def float32(x: Tensor) -> Tensor:
    """``x`` in float32 or wider: a bf16 output of an autocast region → float32, float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Knowledge(nn.Module):
    """The networks of one knowledge type ``k = (e, c)`` in a stage.

    - ``code_flow`` — ``f_c``, shared by the code prior ``p(c)`` and the
      encoder's code posterior ``p(c | e, t)``;
    - ``encoder_discriminator`` — logit of ``p(e = 1 | t)``;
    - ``encoder_posterior[e]`` — ``t → (μ, log σ)`` of ``p(c | e, t)`` before ``f_c``;
    - ``decoder_discriminator`` — logit of ``p(e = 1 | c)``;
    - ``decoder[e]`` — ``c → (μ, log σ)`` over the t-flow's latent ``z``, the
      decoder ``p(t | e, c)``.

    Arguments:
        t_shape: shape of the stage's observation.
        z_dim: dimension of the t-flow's latent.
        code_dim: dimension ``C`` of the code.
        hidden: width of the regressors and discriminators.
        code_steps, code_hidden, permutation: the code flow's size.
        volume_preserving: build ``f_c`` with ``log|det| = 0`` (the default). Otherwise
            rescaling every code by α, which the nets' input ActNorms absorb, lowers the
            loss by ``C·log(1/α)`` per code density, and code spaces collapse
            (docs/objective.md, "Code space").
    """

    def __init__(self, t_shape: Sequence[int], z_dim: int, code_dim: int, hidden: int = 64,
                 code_steps: int = 4, code_hidden: int = 64, permutation: str = "shuffle",
                 volume_preserving: bool = True):
        super().__init__()
        self.code_dim = code_dim
        self.code_flow = VectorFlow(code_dim, code_steps, code_hidden, permutation,
                                    volume_preserving=volume_preserving)
        self.encoder_discriminator = encoder_net(t_shape, hidden, 1)
        self.encoder_posterior = nn.ModuleList(
            GaussianHead(encoder_net(t_shape, hidden, 2 * code_dim)) for _ in range(2))
        self.decoder_discriminator = mlp(code_dim, hidden, 1)
        self.decoder = nn.ModuleList(GaussianHead(mlp(code_dim, hidden, 2 * z_dim)) for _ in range(2))

    def code_log_prob(self, c: Tensor, mean: Tensor | None = None, log_std: Tensor | None = None) -> Tensor:
        """``log q(c | μ, σ)``: a Gaussian base pushed through ``f_c`` (``(B,)``)."""
        u, logdet = self.code_flow(c)
        return gaussian_log_prob(u, mean, log_std) + logdet

    # What tzkgraph.model.stage.knowledge_terms evaluates; tzkgraph.model.stacked.StackedKnowledge has
    # the same methods for K knowledge types at once.

    def encoder_logit(self, t: Tensor) -> Tensor:
        """Logit of ``p(e = 1 | t)``, ``(B,)``, float32 or wider (also under autocast)."""
        return float32(self.encoder_discriminator(t).squeeze(-1))

    def posterior(self, t: Tensor, e: int) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)`` of ``p(c | e, t)`` before ``f_c``, ``(B, C)`` each."""
        return self.encoder_posterior[e](t)

    def decoder_logit(self, c: Tensor) -> Tensor:
        """Logit of ``p(e = 1 | c)``, ``(B,)``, float32 or wider."""
        return float32(self.decoder_discriminator(c).squeeze(-1))

    def decoder_gaussian(self, c: Tensor, e: int) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)`` of the decoder ``p(t | e, c)`` over the t-flow's latent, ``(B, D)`` each."""
        return self.decoder[e](c)

    def code_forward(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """``f_c``: ``(u, logdet)``, ``(B, C)``, ``(B,)``."""
        return self.code_flow(c)

    def code_inverse(self, u: Tensor) -> Tensor:
        """``f_c⁻¹``, ``(B, C)``."""
        return self.code_flow.inverse(u)
