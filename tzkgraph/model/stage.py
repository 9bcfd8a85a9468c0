"""One TzK stage: an observation ``t`` with a flow prior and K knowledge types."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tzkgraph.model.density import gaussian_log_prob
from tzkgraph.model.flows import ActNorm, Flow, Glow, VectorFlow
from tzkgraph.model.nets import Knowledge
from tzkgraph.model.stacked import StackedKnowledge, actnorms_settled, signature
from tzkgraph.model.terms import OBJECTIVES, KnowledgeTerms, Mode, Objective, knowledge_terms

__all__ = ["Knowledge", "KnowledgeTerms", "StageOutput", "TzKStage", "knowledge_terms", "make_t_flow"]


def make_t_flow(t_shape: Sequence[int], levels: int, steps: int, hidden: int,
                permutation: str = "shuffle", activation: str = "swish", prior: str = "learned") -> Flow:
    """The t-flow: a multi-scale Glow for images ``(C, H, W)`` (with ``prior``), a vector flow
    for ``(D,)``."""
    if len(t_shape) == 3:
        return Glow(t_shape, levels, steps, hidden, permutation, activation=activation, prior=prior)
    return VectorFlow(t_shape[0], steps, hidden, permutation, activation=activation)


@dataclass
class StageOutput:
    """What :meth:`TzKStage.loss` returns.

    Attributes:
        loss: what is differentiated: the negative lower bound ``−½(log p_enc + log p_dec)``
            per example of the batch (less ``α``'s labelled term, see ``label_weight``).
        metrics: detached scalar diagnostics (no host sync until read), among them
            ``objective`` (= ``loss``) and ``bound``.
        codes: for each knowledge type with a child, ``c ~ p(c | e=1, t)`` (reparameterised,
            the draw the stage's own e = 1 terms used): the observation the child sees.
        present: for the same, ``P(e = 1)`` per example (``e`` where observed, else
            ``q(e = 1 | t)``, with gradient): the weight of the child's bound.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    codes: dict[str, Tensor] = field(default_factory=dict)
    present: dict[str, Tensor] = field(default_factory=dict)


def _weighted_mean(weight: Tensor | None):
    """``x ↦ Σ w·x / Σ w`` over the batch, the last dim (0 when every weight is 0); the plain
    mean when ``weight`` is ``None``."""
    if weight is None:
        return lambda x: x.mean(-1)
    total = weight.sum().clamp(min=1e-12)
    return lambda x: (weight * x).sum(-1) / total


def _per_example(weight: Tensor | None):
    """``x ↦ Σ w·x / B`` over the batch (the last dim); the plain mean when ``weight`` is ``None``.

    A child stage's loss so weighted adds to its parents' as a joint per example of the
    batch: an example absent from the child contributes its parents' terms alone.
    """
    if weight is None:
        return lambda x: x.mean(-1)
    return lambda x: (weight * x).sum(-1) / x.shape[-1]


def _knowledge_metrics(terms: KnowledgeTerms, e: Tensor, known: Tensor, log_p_t: Tensor,
                       mean) -> dict[str, Tensor]:
    """Per-knowledge diagnostics of a group's terms, ``(K_g,)`` each (no gradient).

    - ``encoder_accuracy``: of ``p(e | t) > ½`` over the examples whose ``e`` is known;
    - ``decoder_accuracy_given_e``: of ``p(e | c) > ½`` with ``c ~ p(c | e, t)``, a code
      drawn *knowing* ``e`` (how well codes carry their ``e``, not a classifier);
    - ``knowledge_gap``: ``log p_dec(t, k) − log p_enc(t, k)``;
    - ``code_std``: the codes' standard deviation over the batch, averaged over dims, and
      ``code_logdet``: the mean ``log|det ∂f_c/∂c|`` at them — a collapsing code space
      shows as a falling ``code_std`` (with a rising ``code_logdet`` unless f_c is
      volume-preserving).
    """
    counted = known.to(terms.logit_t.dtype)
    n = counted.sum(-1).clamp(min=1)
    accuracy = lambda logit: (((logit > 0).to(e.dtype) == e).to(n.dtype) * counted).sum(-1) / n
    code = terms.code.to(n.dtype)  # (K_g, B, C)
    centre = mean(code.transpose(1, 2)).unsqueeze(1)  # (K_g, 1, C)
    spread = mean(((code - centre) ** 2).transpose(1, 2)).sqrt().mean(-1)
    return {"encoder_accuracy": accuracy(terms.logit_t),
            "decoder_accuracy_given_e": accuracy(terms.logit_post),
            "knowledge_gap": mean(terms.dec - log_p_t - terms.enc),
            "code_std": spread, "code_logdet": mean(terms.code_logdet)}


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
        levels, steps, hidden, permutation, activation, prior: the t-flow (``levels`` and
            ``prior`` only for images, see :class:`~tzkgraph.model.flows.Glow`; ``activation``
            of its coupling nets, ``"swish"`` or ``"relu"``).
        net_hidden: width of every knowledge type's networks.
        code_steps, code_hidden: default code-flow size.
        objective: ``"marginal"`` (default) or ``"paper"``: Eq. 10 on the completed data, the
            code imputed per batch from the encoder or the code prior; ``"marginal"``: the codes
            integrated out — the bound on ``½ log p_enc(t, e) + ½ log p_dec(t, e)`` whose decoder half is
            an evidence lower bound with ``p(c | e, t)`` as inference distribution (see
            :mod:`tzkgraph.model.terms` and docs/objective.md).
        label_weight: ``α ≥ 0``, objective "marginal": the objective adds ``α·Σ log p(e_i | t)``
            over the observed ``e_i`` to the bound (the semi-supervised VAE's labelled term);
            ``metrics["bound"]`` stays the bound alone.
        stacked: evaluate knowledge types of identical structure as one stacked
            batch (:mod:`tzkgraph.model.stacked`) in :meth:`loss` and :meth:`discriminate`;
            the same function as one at a time, with about K times fewer operators.

    Example:
        >>> stage = TzKStage((2,), {"left": 2, "right": 2}, steps=4, hidden=32)
        >>> out = stage.loss(t, e)      # t (B, 2), e (B, 2) in {0, 1}
        >>> out.loss.backward()
    """

    def __init__(self, t_shape: Sequence[int], knowledge: Mapping[str, int | Mapping], *,
                 levels: int = 3, steps: int = 4, hidden: int = 64, permutation: str = "shuffle",
                 activation: str = "swish", prior: str = "learned", net_hidden: int = 64, code_steps: int = 4, code_hidden: int = 64,
                 stacked: bool = True, objective: Objective = "marginal",
                 label_weight: float = 0.0):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.t_shape = tuple(t_shape)
        self.label_weight = label_weight
        self.objective = objective
        self.stacked = stacked
        self._structure: dict[str, tuple] = {}  # knowledge name -> (signature, its ActNorms)
        self.t_flow = make_t_flow(self.t_shape, levels, steps, hidden, permutation, activation, prior)
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
        self._structure.clear()
        return self.knowledge[name]

    def groups(self, names: Sequence[str]) -> list[list[str]]:
        """``names`` split into groups of identical structure (stackable together), in order of appearance."""
        groups: dict = {}
        for name in names:
            if name not in self._structure:
                kn = self.knowledge[name]
                self._structure[name] = (signature(kn), [m for m in kn.modules() if isinstance(m, ActNorm)])
            groups.setdefault(self._structure[name][0], []).append(name)
        return list(groups.values())

    def _stack(self, group: Sequence[str]) -> StackedKnowledge | None:
        """The group as one :class:`StackedKnowledge`, or ``None`` to run it one at a time.

        One at a time while stacking is off, for a single member, and while an ActNorm of
        the group may still run its data-dependent initialisation (which the loop does).
        """
        if not self.stacked or len(group) < 2 \
                or not actnorms_settled([a for name in group for a in self._structure[name][1]]):
            return None
        return StackedKnowledge([self.knowledge[name] for name in group])

    # --- densities -------------------------------------------------------------------------

    def t_latent(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, logdet)`` of the t-flow: ``(B, D)``, ``(B,)``."""
        return self.t_flow(t)

    def reads(self, t: Tensor, z: Tensor | None = None) -> Tensor:
        """What the encoder networks ``p(e | t)``, ``p(c | e, t)`` read: an image itself; on a stage
        observing codes, the t-flow's latent ``z = f_t(t)`` (given, or computed).

        A parent's code has no scale of its own: rescaling it changes no bound (the child's flow
        absorbs it, docs/objective.md), so a discriminator reading the code itself gains from
        inflating it, and under a labelled term the codes grew without end (code std 1 → 21 in
        550 steps of mnist_digits). Read through the child's own flow, whose prior pins ``z`` to
        unit scale, a code's separation is paid for in the child's density.
        """
        if len(self.t_shape) == 3:
            return t
        return z if z is not None else self.t_flow(t)[0]

    def log_prob(self, t: Tensor, z: Tensor | None = None, logdet: Tensor | None = None) -> Tensor:
        """``log p(t)`` under the prior, ``(B,)`` nats."""
        if z is None:
            z, logdet = self.t_flow(t)
        return gaussian_log_prob(z) + logdet

    def encode(self, name: str, t: Tensor, e: int = 1, temperature: float = 1.0) -> Tensor:
        """Draws ``c ~ p(c | e, t)`` (reparameterised), ``(B, C)``."""
        return self.draw_code(name, *self.knowledge[name].encoder_posterior[e](self.reads(t)), temperature)

    def draw_code(self, name: str, mean: Tensor, log_std: Tensor, temperature: float = 1.0) -> Tensor:
        """``f_c⁻¹(μ + temperature·σ·ε)``, ``ε ~ N(0, I)``."""
        noise = torch.randn_like(mean)
        return self.knowledge[name].code_flow.inverse(mean + temperature * log_std.exp() * noise)

    def child_inputs(self, name: str, t: Tensor, e: Tensor, observed: Tensor,
                     posterior: tuple[Tensor, Tensor] | None = None,
                     logit: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """What a child stage of knowledge ``name`` gets: ``c ~ q(c | e=1, t)`` and ``P(e = 1)``.

        ``P(e = 1)`` is ``e`` where observed, else ``q(e = 1 | t)``. ``posterior`` (``(μ, log σ)``)
        and ``logit`` may come from a cache instead of ``t``.
        """
        kn = self.knowledge[name]
        if posterior is None or logit is None:
            t = self.reads(t)
        mean, log_std = posterior if posterior is not None else kn.posterior(t, 1)
        logit = logit if logit is not None else kn.encoder_logit(t)
        return self.draw_code(name, mean, log_std), torch.where(observed, e.to(logit.dtype), torch.sigmoid(logit))

    def conditional_log_prob(self, name: str, t: Tensor, z: Tensor | None = None,
                             logdet: Tensor | None = None) -> Tensor:
        """``log p(t | e=1, c)`` with ``c ~ p(c | e=1, t)`` (the paper's Appendix C), ``(B,)``."""
        if z is None:
            z, logdet = self.t_flow(t)
        code = self.draw_code(name, *self.knowledge[name].encoder_posterior[1](self.reads(t, z)))
        mean, log_std = self.knowledge[name].decoder[1](code)
        return gaussian_log_prob(z, mean, log_std) + logdet

    def discriminate(self, t: Tensor, z: Tensor | None = None) -> Tensor:
        """``p(e_i = 1 | t)`` for every knowledge type, ``(B, K)`` (float32 or wider); ``z``: the
        t-flow's latent of ``t`` where already known."""
        if not self.names:
            return t.new_zeros(t.shape[0], 0)
        t = self.reads(t, z)
        logits = {}
        for group in self.groups(self.names):
            stacked = self._stack(group)
            if stacked is None:
                logits.update({name: self.knowledge[name].encoder_logit(t) for name in group})
            else:
                logits.update(zip(group, stacked.encoder_logit(t).unbind()))
        return torch.sigmoid(torch.stack([logits[name] for name in self.names], 1))

    # --- sampling --------------------------------------------------------------------------

    def sample_code(self, name: str, n: int, temperature: float = 1.0, guide: int = 0, e: int = 1) -> Tensor:
        """Draws ``c ~ p(c)``, or with ``guide = M`` from ``p(c | e) ∝ p(e | c) p(c)``, ``(n, C)``.

        Guided: ``M`` codes per sample from ``p(c)`` (at ``temperature``), one of them kept with
        probability ``∝ p(e | c)`` (sampling-importance-resampling; exact as ``M → ∞``).
        """
        kn = self.knowledge[name]
        m = max(guide, 1)
        u = temperature * torch.randn(n * m, kn.code_dim, device=self._device(), dtype=self._dtype())
        c = kn.code_flow.inverse(u)
        if guide <= 1:
            return c
        log_w = torch.nn.functional.logsigmoid((2 * e - 1) * kn.decoder_logit(c)).view(n, m)
        pick = torch.multinomial(torch.softmax(log_w.float(), dim=1), 1).squeeze(1)
        return c.view(n, m, -1)[torch.arange(n, device=c.device), pick]

    def decode(self, name: str, c: Tensor, temperature: float = 1.0, e: int = 1) -> Tensor:
        """Draws ``t ~ p(t | e, c)``, ``(B, *t_shape)``."""
        mean, log_std = self.knowledge[name].decoder[e](c)
        return self.t_flow.inverse(mean + temperature * log_std.exp() * torch.randn_like(mean))

    @torch.no_grad()
    def sample(self, n: int, knowledge: str | None = None, temperature: float = 1.0, guide: int = 0) -> Tensor:
        """Draws ``t`` from the prior ``p(t)``, or from ``p(t | e=1, c)`` with ``c ~ p(c)``.

        Arguments:
            n: number of samples.
            knowledge: a knowledge type's name, or ``None`` for the prior.
            temperature: scales every Gaussian base's standard deviation.
            guide: ``M > 1`` draws ``c`` from ``p(c | e=1)`` instead (see :meth:`sample_code`).
        """
        if knowledge is None:
            z = temperature * torch.randn(n, self.z_dim, device=self._device(), dtype=self._dtype())
            return self.t_flow.inverse(z)
        return self.decode(knowledge, self.sample_code(knowledge, n, temperature, guide), temperature)

    @torch.no_grad()
    def sample_given(self, known: Mapping[str, int], n: int, temperature: float = 1.0,
                     candidates: int = 64) -> Tensor:
        """Draws ``t`` from the stage's model given some of its ``e``: ``M(t | ē)``, ``(n, *t_shape)``.

        The stage's bound ``½ log p_enc + ½ log p_dec`` bounds ``log M`` for the mixture
        ``M = ½ p_enc + ½ p_dec`` of its two normalised models (docs/objective.md), so ``M`` is
        what was trained, and what a parent whose code this stage observes has as that code's
        prior. Its components: the encoder model ``p(t) Π_i p(e_i | t)`` (weight ½) and, per
        knowledge type ``j``, the decoder model ``p_j(t, e_j) Π_{i≠j} p(e_i | t)`` (weight
        ``1/(2K)``); an ``e_i`` not in ``known`` is summed out. Each component proposes
        ``candidates`` draws per sample from its generative part (``t ~ p(t)``; or ``c ~ p(c)``,
        ``t ~ p(t | e_j, c)``) weighted by the rest (``p(e_j | c)`` and the discriminators'
        factors); one is kept per component in proportion to its weight, and a component is
        chosen in proportion to its weight times its mean importance weight (its share of
        ``M(ē)``). Exact as ``candidates → ∞``. ``temperature`` scales every proposal's base.
        """
        m = max(int(candidates), 1)
        k = len(self.names)
        picks, log_shares = [], []

        def keep(t: Tensor, log_w: Tensor, log_weight: float) -> None:
            log_w = log_w.view(n, m).float()
            pick = torch.multinomial(torch.softmax(log_w, dim=1), 1).squeeze(1)
            picks.append(t.view(n, m, *t.shape[1:])[torch.arange(n, device=t.device), pick])
            log_shares.append(log_weight + torch.logsumexp(log_w, dim=1) - math.log(m))

        def others(t: Tensor, but: str | None) -> Tensor:
            """``Σ log p(e_i | t)`` over the known ``e_i``, ``i ≠ but``."""
            if not known:
                return t.new_zeros(t.shape[0])
            probs = self.discriminate(t).clamp(1e-12, 1 - 1e-12)
            out = torch.zeros(t.shape[0], device=t.device, dtype=probs.dtype)
            for name, value in known.items():
                if name != but:
                    p = probs[:, self.names.index(name)]
                    out = out + (p if value else 1 - p).log()
            return out

        t = self.sample(n * m, None, temperature)
        keep(t, others(t, None), math.log(0.5) if k else 0.0)
        for name in self.names:
            kn = self.knowledge[name]
            c = self.sample_code(name, n * m, temperature)
            logit = kn.decoder_logit(c)
            if name in known:
                log_w = F.logsigmoid((2 * known[name] - 1) * logit)
                t = self.decode(name, c, temperature, e=known[name])
            else:  # e_j summed out: drawn from p(e_j | c)
                e = torch.rand_like(logit) < torch.sigmoid(logit)
                log_w = torch.zeros_like(logit)
                draws = [self.decode(name, c, temperature, e=v) for v in (0, 1)]
                t = torch.where(e.view(-1, *[1] * (draws[0].dim() - 1)), draws[1], draws[0])
            keep(t, log_w + others(t, name), math.log(0.5 / k))
        component = torch.multinomial(torch.softmax(torch.stack(log_shares, 1), dim=1), 1).squeeze(1)
        return torch.stack(picks, 1)[torch.arange(n, device=component.device), component]

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- training --------------------------------------------------------------------------

    def loss(self, t: Tensor, e: Tensor, observed: Tensor | None = None, *,
             z: Tensor | None = None, logdet: Tensor | None = None,
             active: Sequence[str] | None = None, mode: Mode | None = None,
             emit_codes: Collection[str] = (), weight: Tensor | None = None) -> StageOutput:
        """The negative lower bound ``−½(log p_enc + log p_dec)`` (Eq. 10), per example of the batch.

        Objective ``"marginal"``: each code is integrated out by a one-sample evidence
        bound with ``q = p(c | e, t)`` (reparameterised); an unobserved ``e_i`` takes
        ``p(e_i | t)`` as its inference distribution, exactly (both values summed).
        Objective ``"paper"``: missing codes are drawn per batch from the encoder
        (``c ~ p(c | e, t)``) or the decoder (``c ~ p(c)``) with probability ½,
        reparameterised; where ``e_i`` is unobserved, the encoder draw takes
        ``e_i ~ p(e_i | t)`` and both joints marginalise ``e_i`` exactly.
        The noise is drawn first, per group of identically structured knowledge
        types, which then run as one stacked batch (see ``stacked``) or one at a
        time: the same function of that noise (:func:`knowledge_terms`).

        ``log p_dec`` is the mean over ``j`` of the normalised decoder models
        ``p_j(t, e_j) Π_{i≠j} p(e_i | t)``: ``mean_j dec_j + (1 − 1/K) Σ_j enc_j`` (the paper's
        Eq. 4 divides the product by ``p(t)^(K−1)`` instead, which is no density of ``t``:
        as the prior of a parent's code it runs off to infinity; docs/objective.md). What is
        differentiated (``loss``, also ``metrics["objective"]``) is the bound itself, plus
        ``label_weight``'s term; ``metrics["bound"]`` is the bound alone.

        Arguments:
            t: observations ``(B, *t_shape)``.
            e: present variables ``(B, K)`` in {0, 1}, columns in :attr:`names` order.
            observed: ``(B, K)`` bool, which entries of ``e`` are known (default all).
            z, logdet: the t-flow's output for ``t``, if already known (a cache).
            active: the knowledge types in the objective (default all); ``[]``
                gives the plain flow NLL ``−log p(t)`` (K = 0).
            mode: objective "paper": ``"encoder"`` or ``"decoder"`` to fix the code source;
                ``None`` draws it (unused by "marginal").
            emit_codes: knowledge types a child stage observes (objective "marginal"): their
                ``e = 1`` bounds take the entropy of ``q(c | e=1, t)`` for the KL, and their
                draws and ``P(e = 1)`` are returned for the child, whose bound completes them.
            weight: ``(B,)`` per-example weights (default 1). A graph passes 0 for
                examples whose parent knowledge is absent, which keeps every shape
                static (no data-dependent indexing). The loss is ``Σ w·L / B``, so
                stages' losses add up to a per-example joint; the metrics are means
                over the examples with ``w > 0``.
        """
        if emit_codes and self.objective != "marginal":
            raise ValueError(f"emit_codes needs objective 'marginal' (a child is the prior of the code), "
                             f"got {self.objective!r}")
        if z is None:
            z, logdet = self.t_flow(t)
        log_p_t = gaussian_log_prob(z) + logdet  # (B,)
        names = self.names if active is None else list(active)
        if observed is None:
            observed = torch.ones_like(e, dtype=torch.bool)
        if mode is None:  # (objective "marginal" draws no code source)
            mode = "encoder" if self.objective == "marginal" or torch.rand(()) < 0.5 else "decoder"
        if mode not in ("encoder", "decoder"):
            raise ValueError(f"mode must be 'encoder' or 'decoder', got {mode!r}")
        mean = _weighted_mean(weight)  # metrics: over the examples that count
        per_example = _per_example(weight)  # the loss: a sum over the batch, per example
        metrics: dict[str, Tensor] = {"log_p_t": mean(log_p_t.detach())}
        log_p_enc = log_p_t
        log_p_knowledge = torch.zeros_like(log_p_t)  # Σ_j dec_j, the decoders' joints
        columns = {name: i for i, name in enumerate(self.names)}
        counted = observed if weight is None else observed & (weight > 0).unsqueeze(1)
        known = counted.T  # (K, B): e known, example counted
        e = e.T
        per_name: dict[str, dict[str, Tensor]] = {}
        codes, present = {}, {}
        reads = self.reads(t, z)
        for group in self.groups(names):
            rows = [columns[name] for name in group]
            e_g, known_g = e[rows], known[rows]  # (K_g, B)
            has_child = [name in emit_codes for name in group]
            terms = self._group_terms(group, reads, z, logdet, e_g, known_g, mode, has_child)
            log_p_enc = log_p_enc + terms.enc.sum(0)
            log_p_knowledge = log_p_knowledge + terms.dec.sum(0)
            with torch.no_grad():
                values = _knowledge_metrics(terms, e_g, known_g, log_p_t, mean)  # (K_g,) each
            for key, value in values.items():
                for name, v in zip(group, value.unbind()):
                    per_name.setdefault(name, {})[key] = v
            for i, name in enumerate(group):
                if name in emit_codes:
                    codes[name], present[name] = terms.draw[i], terms.present[i]
        for name in names:
            metrics.update({f"{name}/{key}": v for key, v in per_name[name].items()})
        for name in emit_codes:
            if name not in codes:  # a frozen knowledge type: its terms are constants here
                codes[name], present[name] = self.child_inputs(name, t, e[columns[name]],
                                                               observed.T[columns[name]])
        log_p_e = log_p_enc - log_p_t  # Σ_j enc_j ("marginal": Σ log p(e_j | t) over the observed e_j)
        k = len(names)  # log p_dec = mean_j [dec_j + Σ_{i≠j} enc_i]
        log_p_dec = log_p_knowledge / k + (1 - 1 / k) * log_p_e if names else log_p_t
        objective = -0.5 * per_example(log_p_enc + log_p_dec)
        bound = objective.detach()
        if self.label_weight and self.objective == "marginal":
            objective = objective - self.label_weight * per_example(log_p_e)
        metrics.update(loss=objective.detach(), objective=objective.detach(), bound=bound,
                       log_p_enc=mean(log_p_enc.detach()), log_p_dec=mean(log_p_dec.detach()))
        return StageOutput(objective, metrics, codes, present)

    def _group_terms(self, group: Sequence[str], t: Tensor, z: Tensor, logdet: Tensor, e: Tensor,
                     known: Tensor, mode: Mode, has_child: Sequence[bool] = ()) -> KnowledgeTerms:
        """:func:`knowledge_terms` of a group of identical structure, every result ``(K_g, …)``.

        Draws the group's noise, then evaluates the group stacked, or one at a time
        (see :meth:`_stack`); both compute the same function of that noise.
        """
        k, batch = len(group), z.shape[0]
        dtype = torch.promote_types(z.dtype, torch.float32)
        noise = torch.randn(k, batch, self.knowledge[group[0]].code_dim, device=z.device, dtype=dtype)
        uniform = torch.rand(k, batch, device=z.device, dtype=dtype)
        has_child = list(has_child) or [False] * k
        stacked = self._stack(group)
        if stacked is not None:
            children = torch.tensor(has_child, device=z.device).unsqueeze(1) if any(has_child) else False
            return knowledge_terms(stacked, t, z, logdet, e, known, uniform, noise, mode, self.objective,
                                   children)
        each = [knowledge_terms(self.knowledge[name], t, z, logdet, e[i], known[i], uniform[i], noise[i],
                                mode, self.objective, has_child[i])
                for i, name in enumerate(group)]
        fields = [(o.enc, o.dec, *o.posterior, o.logit_t, o.logit_post, o.code, o.code_logdet) for o in each]
        enc, dec, mu, log_sigma, logit_t, logit_post, code, code_logdet = (torch.stack(x) for x in zip(*fields))
        draw = present = None
        if each[0].draw is not None:
            draw, present = torch.stack([o.draw for o in each]), torch.stack([o.present for o in each])
        return KnowledgeTerms(enc, dec, (mu, log_sigma), logit_t, logit_post, code, code_logdet, draw, present)
