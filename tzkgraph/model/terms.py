"""One knowledge type's terms of a stage's bound, under either objective.

``"marginal"``: the code ``c`` is marginalised — the bound on
``½ log p_enc(t, e) + ½ log p_dec(t, e)`` whose decoder half is an evidence lower
bound with the encoder posterior ``p(c | e, t)`` as its inference distribution.
``"paper"`` (a stage's default): Eq. 10 of the TzK paper on the completed data ``(t, e, c)``, with ``c``
imputed per batch from the encoder posterior or the code prior. docs/objective.md
("What is optimised") argues the choice; :func:`knowledge_terms` evaluates either.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from tzkgraph.model.density import gaussian_log_prob

__all__ = ["KnowledgeTerms", "Mode", "Objective", "OBJECTIVES", "knowledge_terms"]

Objective = Literal["marginal", "paper"]
Mode = Literal["encoder", "decoder"]
OBJECTIVES = ("marginal", "paper")


class _Evaluates(Protocol):  # a Knowledge, or a StackedKnowledge (every result with a leading K)
    def encoder_logit(self, t: Tensor) -> Tensor: ...
    def posterior(self, t: Tensor, e: int) -> tuple[Tensor, Tensor]: ...
    def decoder_logit(self, c: Tensor) -> Tensor: ...
    def decoder_gaussian(self, c: Tensor, e: int) -> tuple[Tensor, Tensor]: ...
    def code_forward(self, c: Tensor) -> tuple[Tensor, Tensor]: ...
    def code_inverse(self, u: Tensor) -> Tensor: ...


class KnowledgeTerms(NamedTuple):
    """What :func:`knowledge_terms` returns; ``(…, B)`` unless said (``…``: ``K`` if stacked)."""

    enc: Tensor  #: the encoder's log p(e | t) [· p(c | e, t), objective "paper"]
    dec: Tensor  #: the decoder's log p(t, e | k) bound ("marginal") or log p(t | e, c) p(e | c) p(c) ("paper")
    posterior: tuple[Tensor, Tensor]  #: (μ, log σ) of p(c | e=1, t) before f_c, (…, B, C) each
    logit_t: Tensor  #: logit of p(e = 1 | t), detached
    logit_post: Tensor  #: logit of p(e = 1 | c) at c ~ p(c | e, t), no gradient
    code: Tensor  #: the code c the terms were evaluated at, detached, (…, B, C)
    code_logdet: Tensor  #: log|det ∂f_c/∂c| there, detached (0 for a volume-preserving f_c)
    draw: Tensor | None = None  #: "marginal": c ~ q(c | e=1, t), reparameterised (the code a child observes)
    present: Tensor | None = None  #: "marginal": P(e = 1): e where observed, else q(e = 1 | t) (with gradient)


def knowledge_terms(kn: _Evaluates, t: Tensor, z: Tensor, logdet: Tensor, e: Tensor, observed: Tensor,
                    uniform: Tensor, noise: Tensor, mode: Mode = "encoder",
                    objective: Objective = "paper", has_child: Tensor | bool = False) -> KnowledgeTerms:
    """One knowledge type's (or, stacked, K types') terms of the bound, given all the noise.

    A deterministic function of its arguments: :meth:`TzKStage.loss` draws the noise,
    then evaluates it one knowledge type at a time or stacked, with the same result.

    Arguments:
        kn: a :class:`Knowledge`, or a :class:`~tzkgraph.model.stacked.StackedKnowledge`
            (then ``e``, ``observed``, ``uniform``, ``noise`` and the results have a
            leading dim ``K``).
        t, z, logdet: the observation ``(B, *t_shape)`` and its t-flow output ``(B, D)``, ``(B,)``.
        e: present variable ``(B,)`` in {0, 1}; observed: ``(B,)`` bool, whether ``e`` is known.
        uniform: ``(B,)`` in [0, 1): an unobserved ``e`` is drawn as ``uniform < p(e = 1 | t)``
            (the code the metrics see; objective "paper": the code of the encoder draw).
        noise: ``(B, C)`` standard normal: the code is ``f_c⁻¹(μ + σ·noise)`` (encoder) or
            ``f_c⁻¹(noise)`` (decoder, objective "paper").
        mode: objective "paper": ``"encoder"`` or ``"decoder"``, the code's source.
        objective: ``"marginal"`` or ``"paper"`` (see the module docs).
        has_child: objective "marginal": whether a child stage is the prior of the code (``(…, 1)``
            bool, or one bool): then the ``e = 1`` bound leaves out ``−KL(q ‖ p(c))`` for the
            entropy ``H[q]``, and the child's bound on :attr:`KnowledgeTerms.draw` completes it.

    Returns:
        :class:`KnowledgeTerms`; where ``e`` is unobserved both joints are marginalised
        over it (objective "paper": log-sum-exp over ``e ∈ {0, 1}``; "marginal": the
        decoder bound takes ``p(e | t)`` as ``e``'s inference distribution).
    """
    if mode not in ("encoder", "decoder"):
        raise ValueError(f"mode must be 'encoder' or 'decoder', got {mode!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    logit_t = kn.encoder_logit(t)
    posterior = [kn.posterior(t, value) for value in (0, 1)]  # [(μ, log σ)] for e = 0, 1
    e_draw = torch.where(observed, e, (uniform < torch.sigmoid(logit_t.detach())).to(e.dtype))
    pick = e_draw.bool().unsqueeze(-1)
    if objective == "marginal":
        return _marginal(kn, z, logdet, e, observed, noise, logit_t, posterior, pick, has_child)
    sample = torch.where(pick, posterior[1][0], posterior[0][0]) \
        + torch.where(pick, posterior[1][1], posterior[0][1]).exp() * noise
    c = kn.code_inverse(sample if mode == "encoder" else noise)

    u, code_logdet = kn.code_forward(c)
    log_p_c = gaussian_log_prob(u, event_dims=1) + code_logdet
    logit_c = kn.decoder_logit(c)
    enc_e, dec_e = [], []
    for value, sign in ((0, -1.0), (1, 1.0)):
        log_p_c_given_t = gaussian_log_prob(u, *posterior[value], event_dims=1) + code_logdet
        log_p_t_given_c = gaussian_log_prob(z, *kn.decoder_gaussian(c, value), event_dims=1) + logdet
        enc_e.append(F.logsigmoid(sign * logit_t) + log_p_c_given_t)
        dec_e.append(F.logsigmoid(sign * logit_c) + log_p_t_given_c)
    present = e.bool()
    enc = torch.where(observed, torch.where(present, enc_e[1], enc_e[0]), torch.logaddexp(*enc_e))
    dec = log_p_c + torch.where(observed, torch.where(present, dec_e[1], dec_e[0]), torch.logaddexp(*dec_e))
    with torch.no_grad():  # the decoder discriminator on a code from the encoder
        logit_post = logit_c.detach() if mode == "encoder" else kn.decoder_logit(kn.code_inverse(sample))
    return KnowledgeTerms(enc, dec, posterior[1], logit_t.detach(), logit_post, c.detach(),
                          code_logdet.detach())


def _marginal(kn: _Evaluates, z: Tensor, logdet: Tensor, e: Tensor, observed: Tensor, noise: Tensor,
              logit_t: Tensor, posterior: list[tuple[Tensor, Tensor]], pick: Tensor,
              has_child: Tensor | bool = False) -> KnowledgeTerms:
    """The terms of objective "marginal": ``c`` integrated out, not imputed.

    ``enc = log p(e | t)`` — the encoder's joint ``p(t) p(e | t) p(c | e, t)`` integrates
    over ``c`` to ``p(t) p(e | t)`` exactly. ``dec`` bounds ``log p(t, e | k)`` =
    ``log ∫ p(t | e, c) p(e | c) p(c) dc`` from below with ``q = p(c | e, t)``:
    ``E_q[log p(t | e, c) + log p(e | c)] − KL(q ‖ p(c))``, one reparameterised code per
    example, the KL in closed form in f_c's base space (where both are Gaussians; the
    KL is invariant under f_c, so f_c's log-determinant cancels). An unobserved ``e`` takes
    ``q(e, c) = p(e | t) p(c | e, t)``: ``dec = Σ_e p(e | t) (bound_e − log p(e | t))``.

    Where a child stage observes the code (``has_child``), the child is the prior of
    ``c`` given ``e = 1``: ``−KL(q ‖ p(c)) = H[q] + E_q log p(c)`` keeps ``H[q]`` (in c-space:
    ``Σ log σ + C/2·log 2πe − E_q log|det ∂f_c/∂c|``) and the child's bound on the same draw
    :attr:`KnowledgeTerms.draw`, weighted by :attr:`KnowledgeTerms.present`, stands in for
    ``E_q log p(c)`` (docs/objective.md).
    """
    bound_e, logit_e, code_e = [], [], []
    for value, sign in ((0, -1.0), (1, 1.0)):
        mean, log_std = posterior[value]
        c = kn.code_inverse(mean + log_std.exp() * noise)
        logit_c = kn.decoder_logit(c)
        kl = 0.5 * (mean.square() + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
        if value == 1 and has_child is not False:
            code_dim = mean.shape[-1]
            entropy = log_std.sum(-1) + 0.5 * code_dim * (1 + math.log(2 * math.pi)) - kn.code_forward(c)[1]
            kl = torch.where(torch.as_tensor(has_child, device=kl.device), -entropy, kl)
        log_p_t_given_c = gaussian_log_prob(z, *kn.decoder_gaussian(c, value), event_dims=1) + logdet
        bound_e.append(log_p_t_given_c + F.logsigmoid(sign * logit_c) - kl.to(log_p_t_given_c.dtype))
        logit_e.append(logit_c)
        code_e.append(c)
    log_q_e = (F.logsigmoid(-logit_t), F.logsigmoid(logit_t))
    q_1 = torch.sigmoid(logit_t)
    unknown = q_1 * (bound_e[1] - log_q_e[1]) + (1 - q_1) * (bound_e[0] - log_q_e[0])
    present = e.bool()
    enc = torch.where(observed, torch.where(present, log_q_e[1], log_q_e[0]), torch.zeros_like(logit_t))
    dec = torch.where(observed, torch.where(present, bound_e[1], bound_e[0]), unknown)
    p_1 = torch.where(observed, e.to(q_1.dtype), q_1)
    with torch.no_grad():
        c = torch.where(pick, code_e[1], code_e[0])
        logit_post = torch.where(pick.squeeze(-1), logit_e[1], logit_e[0])
        code_logdet = kn.code_forward(c)[1]
    return KnowledgeTerms(enc, dec, posterior[1], logit_t.detach(), logit_post, c, code_logdet,
                          code_e[1], p_1)
