"""Importance-weighted estimates of a stage's decoder densities, for evaluation.

The paper's Appendix C scores a conditional with one code, ``log p(t | e=1, c)`` at
``c ~ p(c | e=1, t)``: that is not a bound on anything (it leaves out how unlikely the
code is under ``p(c)``). The estimates here are the usual importance-weighted ones
(Burda et al.), with the encoder's code posterior as the proposal:

    log p_dec(t, e) ≈ log 1/S Σ_s p(t | e, c_s) p(e | c_s) p(c_s) / p(c_s | e, t),  c_s ~ p(c | e, t)

a stochastic lower bound whose expectation rises to the true log-density as ``S`` grows.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tzkgraph.model.density import gaussian_log_prob
from tzkgraph.model.stage import TzKStage

__all__ = ["decoder_log_density", "decoder_log_odds"]


def decoder_log_density(stage: TzKStage, name: str, t: Tensor, z: Tensor, logdet: Tensor, e: int,
                        samples: int = 16, discriminator: bool = False,
                        posterior: tuple[Tensor, Tensor] | None = None,
                        code_prior: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """An importance-weighted lower bound on a decoder density of ``t``, ``(B,)`` nats.

    Arguments:
        stage, name: the stage and its knowledge type.
        t: the observations ``(B, *t_shape)``; ``z``, ``logdet`` their t-flow output.
        e: the present variable's value, 0 or 1.
        samples: ``S``, codes per example.
        discriminator: ``False``: ``log ∫ p(t | e, c) p(c) dc``, the density that
            ``tzkgraph sample`` draws from (``c ~ p(c)``, then ``t ~ p(t | e, c)``);
            ``True``: ``log ∫ p(t | e, c) p(e | c) p(c) dc = log p_dec(t, e)``, the
            decoder's joint of ``t`` and ``e``.
        posterior: ``(μ, log σ)`` of ``p(c | e, t)`` if already computed (else from ``t``).
        code_prior: ``c ↦ log p(c)`` in c-space, ``(N,)``, in place of the knowledge type's own
            ``p(c)``: where a child stage is the prior of the code, its flow density.

    The code densities are compared in ``f_c``'s base space, where the proposal is a
    Gaussian; ``f_c``'s log-determinant is common to ``p(c)`` and ``p(c | e, t)`` and cancels
    (with ``code_prior``, the proposal's density is taken in c-space).
    """
    kn = stage.knowledge[name]
    mean, log_std = kn.encoder_posterior[e](stage.reads(t)) if posterior is None else posterior  # (B, C)
    batch, dim = mean.shape
    u = mean + log_std.exp() * torch.randn(samples, batch, dim, device=mean.device, dtype=mean.dtype)
    log_w = gaussian_log_prob(u, event_dims=1) - gaussian_log_prob(u, mean, log_std, event_dims=1)  # (S, B)
    c = kn.code_flow.inverse(u.reshape(samples * batch, dim))
    if code_prior is not None:  # log p(c) − log q(c) in c-space: q's density carries f_c's logdet
        log_q = gaussian_log_prob(u, mean, log_std, event_dims=1) + kn.code_flow(c)[1].view(samples, batch)
        log_w = code_prior(c).view(samples, batch) - log_q
    dec_mean, dec_log_std = kn.decoder[e](c)  # (S·B, D)
    log_p_t = gaussian_log_prob(z.repeat(samples, 1), dec_mean, dec_log_std).view(samples, batch) + logdet
    log_w = log_w + log_p_t
    if discriminator:
        logit = kn.decoder_discriminator(c).squeeze(-1).float().view(samples, batch)
        log_w = log_w + F.logsigmoid(logit if e == 1 else -logit)
    return torch.logsumexp(log_w, 0) - math.log(samples)


def decoder_log_odds(stage: TzKStage, name: str, t: Tensor, z: Tensor, logdet: Tensor,
                     samples: int = 16, posteriors: list[tuple[Tensor, Tensor]] | None = None,
                     code_prior: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``log p_dec(t, e=1) − log p_dec(t, e=0)``, ``(B,)``: the decoder as a classifier.

    Bayes' rule on the decoder's joint, with no look at the label (unlike the
    ``decoder_accuracy_given_e`` of training, whose code is drawn knowing ``e``).
    ``posteriors``: ``p(c | e, t)``'s ``(μ, log σ)`` for ``e = 0, 1``, if already computed;
    ``code_prior``: the prior of the code given ``e = 1`` (see :func:`decoder_log_density`).
    """
    lp = [decoder_log_density(stage, name, t, z, logdet, e, samples, discriminator=True,
                              posterior=None if posteriors is None else posteriors[e],
                              code_prior=code_prior if e == 1 else None) for e in (0, 1)]
    return lp[1] - lp[0]
