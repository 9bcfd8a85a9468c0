"""One TzK stage: an observation ``t`` with a flow prior and K knowledge types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .density import gaussian_log_prob
from .flows import Flow, Glow, VectorFlow
from .nets import GaussianHead, encoder_net, mlp

__all__ = ["Knowledge", "StageOutput", "TzKStage", "make_t_flow"]


def make_t_flow(t_shape: Sequence[int], levels: int, steps: int, hidden: int,
                permutation: str = "shuffle") -> Flow:
    """The t-flow: a multi-scale Glow for images ``(C, H, W)``, a vector flow for ``(D,)``."""
    if len(t_shape) == 3:
        return Glow(t_shape, levels, steps, hidden, permutation)
    return VectorFlow(t_shape[0], steps, hidden, permutation)


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
    """

    def __init__(self, t_shape: Sequence[int], z_dim: int, code_dim: int, hidden: int = 64,
                 code_steps: int = 4, code_hidden: int = 64, permutation: str = "shuffle"):
        super().__init__()
        self.code_dim = code_dim
        self.code_flow = VectorFlow(code_dim, code_steps, code_hidden, permutation)
        self.encoder_discriminator = encoder_net(t_shape, hidden, 1)
        self.encoder_posterior = nn.ModuleList(
            GaussianHead(encoder_net(t_shape, hidden, 2 * code_dim)) for _ in range(2))
        self.decoder_discriminator = mlp(code_dim, hidden, 1)
        self.decoder = nn.ModuleList(GaussianHead(mlp(code_dim, hidden, 2 * z_dim)) for _ in range(2))

    def code_log_prob(self, c: Tensor, mean: Tensor | None = None, log_std: Tensor | None = None) -> Tensor:
        """``log q(c | μ, σ)``: a Gaussian base pushed through ``f_c`` (``(B,)``)."""
        u, logdet = self.code_flow(c)
        return gaussian_log_prob(u, mean, log_std) + logdet


@dataclass
class StageOutput:
    """What :meth:`TzKStage.loss` returns.

    Attributes:
        loss: the negative lower bound ``−½(log p_enc + log p_dec)``, batch mean.
        metrics: detached scalar diagnostics (no host sync until read).
        codes: for each requested knowledge, ``c ~ p(c | e=1, t)``
            (reparameterised), the observation a child stage sees.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    codes: dict[str, Tensor] = field(default_factory=dict)


def _where_e(e: Tensor, if_one: Tensor, if_zero: Tensor) -> Tensor:
    """Selects per example by a 0/1 tensor ``e`` (broadcast over trailing dims)."""
    mask = e.bool().view(-1, *([1] * (if_one.dim() - 1)))
    return torch.where(mask, if_one, if_zero)


def _weighted_mean(weight: Tensor):
    """``x ↦ Σ w·x / Σ w`` over the batch (0 when every weight is 0)."""
    total = weight.sum().clamp(min=1e-12)
    return lambda x: (weight * x).sum() / total


class TzKStage(nn.Module):
    """A TzK model over an observation ``t`` (Livne & Fleet, Eqs. 3–7, 10).

    Factors: the prior ``p(t)`` (t-flow), and per knowledge type ``i`` the
    encoder ``p(e_i | t) p(c_i | e_i, t)`` and the decoder
    ``p(t | e_i, c_i) p(e_i | c_i) p(c_i)``; see :class:`Knowledge`. Every
    density over a variable is a Gaussian base pushed through that variable's
    flow; conditional ones regress the Gaussian's ``(μ, σ)``.

    Arguments:
        t_shape: ``(C, H, W)`` for images, ``(D,)`` for codes of a parent stage.
        knowledge: knowledge name → code dimension, or → a dict of
            :class:`Knowledge` keyword arguments (``code_dim`` and any of
            ``code_steps``, ``code_hidden``, ``permutation``).
        levels, steps, hidden, permutation: the t-flow (``levels`` only for images).
        net_hidden: width of every knowledge type's networks.
        code_steps, code_hidden: default code-flow size.
        exact_gradient: differentiate the ``−(K−1)·log p(t)`` factor of ``log p_dec``
            too. Off by default: that factor's gradient rewards a trainable
            t-flow for shrinking ``p(t)`` when ``K > 2``, and the bound then
            diverges (the loss's value is the same either way).

    Example:
        >>> stage = TzKStage((2,), {"left": 2, "right": 2}, steps=4, hidden=32)
        >>> out = stage.loss(t, e)      # t (B, 2), e (B, 2) in {0, 1}
        >>> out.loss.backward()
    """

    def __init__(self, t_shape: Sequence[int], knowledge: Mapping[str, int | Mapping], *,
                 levels: int = 3, steps: int = 4, hidden: int = 64, permutation: str = "shuffle",
                 net_hidden: int = 64, code_steps: int = 4, code_hidden: int = 64,
                 exact_gradient: bool = False):
        super().__init__()
        self.t_shape = tuple(t_shape)
        self.exact_gradient = exact_gradient
        self.t_flow = make_t_flow(self.t_shape, levels, steps, hidden, permutation)
        self.z_dim = self.t_flow.dim
        self._defaults = dict(hidden=net_hidden, code_steps=code_steps, code_hidden=code_hidden,
                              permutation=permutation)
        self.knowledge = nn.ModuleDict()
        for name, config in knowledge.items():
            self.add_knowledge(name, config)

    @property
    def names(self) -> list[str]:
        """Knowledge type names, in order (the columns of ``e``)."""
        return list(self.knowledge.keys())

    def add_knowledge(self, name: str, config: int | Mapping) -> Knowledge:
        """Adds a knowledge type (online knowledge: nothing else changes)."""
        kwargs = dict(self._defaults, **({"code_dim": config} if isinstance(config, int) else config))
        self.knowledge[name] = Knowledge(self.t_shape, self.z_dim, **kwargs)
        return self.knowledge[name]

    # --- densities -------------------------------------------------------------------------

    def t_latent(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, logdet)`` of the t-flow: ``(B, D)``, ``(B,)``."""
        return self.t_flow(t)

    def log_prob(self, t: Tensor, z: Tensor | None = None, logdet: Tensor | None = None) -> Tensor:
        """``log p(t)`` under the prior, ``(B,)`` nats."""
        if z is None:
            z, logdet = self.t_flow(t)
        return gaussian_log_prob(z) + logdet

    def encode(self, name: str, t: Tensor, e: int = 1, temperature: float = 1.0) -> Tensor:
        """Draws ``c ~ p(c | e, t)`` (reparameterised), ``(B, C)``."""
        kn = self.knowledge[name]
        mean, log_std = kn.encoder_posterior[e](t)
        return kn.code_flow.inverse(mean + temperature * log_std.exp() * torch.randn_like(mean))

    def conditional_log_prob(self, name: str, t: Tensor, z: Tensor | None = None,
                             logdet: Tensor | None = None) -> Tensor:
        """``log p(t | e=1, c)`` with ``c ~ p(c | e=1, t)`` (the paper's Appendix C), ``(B,)``."""
        if z is None:
            z, logdet = self.t_flow(t)
        mean, log_std = self.knowledge[name].decoder[1](self.encode(name, t))
        return gaussian_log_prob(z, mean, log_std) + logdet

    def discriminate(self, t: Tensor) -> Tensor:
        """``p(e_i = 1 | t)`` for every knowledge type, ``(B, K)``."""
        return torch.cat([torch.sigmoid(kn.encoder_discriminator(t)) for kn in self.knowledge.values()], 1)

    # --- sampling --------------------------------------------------------------------------

    def sample_code(self, name: str, n: int, temperature: float = 1.0) -> Tensor:
        """Draws ``c ~ p(c)``, ``(n, C)``."""
        kn = self.knowledge[name]
        u = temperature * torch.randn(n, kn.code_dim, device=self._device(), dtype=self._dtype())
        return kn.code_flow.inverse(u)

    def decode(self, name: str, c: Tensor, temperature: float = 1.0, e: int = 1) -> Tensor:
        """Draws ``t ~ p(t | e, c)``, ``(B, *t_shape)``."""
        mean, log_std = self.knowledge[name].decoder[e](c)
        return self.t_flow.inverse(mean + temperature * log_std.exp() * torch.randn_like(mean))

    @torch.no_grad()
    def sample(self, n: int, knowledge: str | None = None, temperature: float = 1.0) -> Tensor:
        """Draws ``t`` from the prior ``p(t)``, or from ``p(t | e=1, c)`` with ``c ~ p(c)``.

        Arguments:
            n: number of samples.
            knowledge: a knowledge type's name, or ``None`` for the prior.
            temperature: scales every Gaussian base's standard deviation.
        """
        if knowledge is None:
            z = temperature * torch.randn(n, self.z_dim, device=self._device(), dtype=self._dtype())
            return self.t_flow.inverse(z)
        return self.decode(knowledge, self.sample_code(knowledge, n, temperature), temperature)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- training --------------------------------------------------------------------------

    def loss(self, t: Tensor, e: Tensor, observed: Tensor | None = None, *,
             z: Tensor | None = None, logdet: Tensor | None = None,
             active: Sequence[str] | None = None, mode: str | None = None,
             emit_codes: Collection[str] = (), weight: Tensor | None = None) -> StageOutput:
        """The negative lower bound ``−½(log p_enc + log p_dec)`` (Eq. 10), batch mean.

        Missing codes are drawn per batch from the encoder (``c ~ p(c | e, t)``)
        or the decoder (``c ~ p(c)``) with probability ½, reparameterised. Where
        ``e_i`` is unobserved, the encoder draw takes ``e_i ~ p(e_i | t)`` and
        both joints marginalise ``e_i`` exactly (log-sum-exp over ``e_i ∈ {0,1}``).

        Arguments:
            t: observations ``(B, *t_shape)``.
            e: present variables ``(B, K)`` in {0, 1}, columns in :attr:`names` order.
            observed: ``(B, K)`` bool, which entries of ``e`` are known (default all).
            z, logdet: the t-flow's output for ``t``, if already known (a cache).
            active: the knowledge types in the objective (default all); ``[]``
                gives the plain flow NLL ``−log p(t)`` (K = 0).
            mode: ``"encoder"`` or ``"decoder"`` to fix the code source; ``None`` draws it.
            emit_codes: knowledge types whose ``c ~ p(c | e=1, t)`` to return.
            weight: ``(B,)`` per-example weights of the mean (default 1). A graph
                passes 0 for examples whose parent knowledge is absent, which
                keeps every shape static (no data-dependent indexing).
        """
        if z is None:
            z, logdet = self.t_flow(t)
        log_p_t = gaussian_log_prob(z) + logdet  # (B,)
        names = self.names if active is None else list(active)
        if observed is None:
            observed = torch.ones_like(e, dtype=torch.bool)
        if mode is None:
            mode = "encoder" if torch.rand(()) < 0.5 else "decoder"
        if weight is None:
            weight = torch.ones_like(log_p_t)
        mean = _weighted_mean(weight)
        metrics: dict[str, Tensor] = {"log_p_t": mean(log_p_t.detach())}
        log_p_enc = log_p_t
        # p_dec = Π p(t|k_i) p(k_i) / p(t)^(K-1) (Eq. 4). Its value is the paper's; its gradient
        # through the -(K-1) log p(t) factor is cut (unless `exact_gradient`): with K > 2 that
        # factor rewards a t-flow for making p(t) small and the bound runs off to -inf.
        correction = log_p_t if self.exact_gradient else log_p_t.detach()
        log_p_dec = -(len(names) - 1) * correction
        columns = {name: i for i, name in enumerate(self.names)}
        for name in names:
            col = columns[name]
            enc, dec = self._knowledge_terms(name, t, z, logdet, e[:, col], observed[:, col] & (weight > 0),
                                             mode, metrics)
            log_p_enc = log_p_enc + enc
            log_p_dec = log_p_dec + dec
            metrics[f"{name}/knowledge_gap"] = mean((dec - log_p_t - enc).detach())
        codes = {name: self.encode(name, t) for name in emit_codes}
        loss = -0.5 * mean(log_p_enc + log_p_dec)
        metrics.update(loss=loss.detach(), log_p_enc=mean(log_p_enc.detach()),
                       log_p_dec=mean(log_p_dec.detach()))
        return StageOutput(loss, metrics, codes)

    def _knowledge_terms(self, name: str, t: Tensor, z: Tensor, logdet: Tensor, e: Tensor,
                         observed: Tensor, mode: str, metrics: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``log p(k_i | t)`` and ``log p(t | k_i) p(k_i)`` per example, ``(B,)`` each."""
        kn = self.knowledge[name]
        logit_t = kn.encoder_discriminator(t).squeeze(1).float()  # (B,); float32 under autocast
        posterior = [head(t) for head in kn.encoder_posterior]  # [(μ, log σ)] for e = 0, 1
        e_draw = torch.where(observed, e, torch.bernoulli(torch.sigmoid(logit_t.detach())))
        post_mean = _where_e(e_draw, posterior[1][0], posterior[0][0])
        post_log_std = _where_e(e_draw, posterior[1][1], posterior[0][1])
        noise = torch.randn_like(post_mean)
        if mode == "encoder":
            c = kn.code_flow.inverse(post_mean + post_log_std.exp() * noise)
        elif mode == "decoder":
            c = kn.code_flow.inverse(noise)
        else:
            raise ValueError(f"mode must be 'encoder' or 'decoder', got {mode!r}")

        u, code_logdet = kn.code_flow(c)
        log_p_c = gaussian_log_prob(u) + code_logdet
        logit_c = kn.decoder_discriminator(c).squeeze(1).float()
        enc_e, dec_e = [], []
        for value, sign in ((0, -1.0), (1, 1.0)):
            log_p_c_given_t = gaussian_log_prob(u, *posterior[value]) + code_logdet
            mean, log_std = kn.decoder[value](c)
            log_p_t_given_c = gaussian_log_prob(z, mean, log_std) + logdet
            enc_e.append(F.logsigmoid(sign * logit_t) + log_p_c_given_t)
            dec_e.append(F.logsigmoid(sign * logit_c) + log_p_t_given_c)
        enc = torch.where(observed, _where_e(e, enc_e[1], enc_e[0]), torch.logaddexp(*enc_e))
        dec = log_p_c + torch.where(observed, _where_e(e, dec_e[1], dec_e[0]), torch.logaddexp(*dec_e))

        with torch.no_grad():  # discriminator accuracies on the examples whose e is known
            known = observed.float()
            n = known.sum().clamp(min=1)
            metrics[f"{name}/encoder_accuracy"] = (((logit_t > 0).float() == e).float() * known).sum() / n
            c_post = c if mode == "encoder" else kn.code_flow.inverse(post_mean + post_log_std.exp() * noise)
            logit_post = kn.decoder_discriminator(c_post).squeeze(1)
            metrics[f"{name}/decoder_accuracy"] = (((logit_post > 0).float() == e).float() * known).sum() / n
        return enc, dec
