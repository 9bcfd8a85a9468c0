"""Structurally identical modules evaluated at once, as one batch with a leading dim ``K``.

A stage's knowledge types often share a configuration (mnist_digits' ten digits): their
networks then have the same layers and shapes, and running each layer once for all of them
— a batched matrix product instead of ``K`` small ones — cuts the operators of a step about
``K``-fold. :class:`StackedModules` stacks the ``K`` modules' parameters and buffers with
``torch.stack`` for every evaluation (nothing is kept from one to the next). That is
differentiable: gradients reach every module's own parameters, so the modules themselves,
their ``state_dict`` keys, freezing, checkpoints and knowledge types added later are
untouched.

Batched activations are ``(K, B, D)``; an input shared by the ``K`` modules (the stage's
observation ``t``) comes as it is, ``(B, D)``. Convolutional networks (on an image ``t``)
are not stacked: each module's runs on its own and the outputs are stacked. Grouped
convolutions (the ``K`` modules' convolutions as one) were measured 1.2–1.4× slower than
``K`` plain ones on CPU (oneDNN; two of mnist_digits' image encoder nets, 1×32×32, batch
64, forward + backward), and 10–25 % faster (about 1 ms) on an H100.

Only the layers a :class:`~tzkgraph.model.nets.Knowledge` is built from are implemented
(:func:`stackable` tells); the modules must not be in the middle of their ActNorms'
data-dependent initialisation (:func:`actnorms_settled`).
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tzkgraph.model import nets
from tzkgraph.model.flows import ActNorm, AffineCoupling, FlowSequence, InvConvLU, Shuffle, VectorFlow
from tzkgraph.model.flows import coupling
from tzkgraph.model.flows.actnorm import actnorm_log_scale
from tzkgraph.model.flows.permute import lu_weight
from tzkgraph.model.flows.base import centred

__all__ = ["StackedModules", "StackedKnowledge", "signature", "stackable", "actnorms_settled"]


class StackedModules:
    """``K`` modules of identical structure (see :func:`signature`), run as one batch.

    ``stacked(module, x)`` runs the submodule ``module`` of the first (the template) for
    all ``K`` at once; :meth:`flow_forward` and :meth:`flow_inverse` do the same for flows.
    Parameters are stacked on first use and kept for the object's life: make one per
    evaluation (per training step).

    Arguments:
        modules: the ``K`` modules, with equal :func:`signature`.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        self.k = len(modules)
        self.template = modules[0]
        # template submodule -> the K corresponding submodules (same traversal order)
        self._peers = {peers[0]: peers for peers in zip(*(m.modules() for m in modules))}
        self._stacks: dict[tuple[nn.Module, str], Tensor] = {}

    def tensor(self, module: nn.Module, name: str) -> Tensor:
        """The parameter or buffer ``name`` of ``module``'s ``K`` peers, stacked: ``(K, *shape)``."""
        key = (module, name)
        if key not in self._stacks:
            peers = self._peers[module]
            where = "_parameters" if name in module._parameters else "_buffers"
            self._stacks[key] = torch.stack([getattr(p, where)[name] for p in peers])
        return self._stacks[key]

    def __call__(self, module: nn.Module, x: Tensor) -> Tensor:
        """Runs the template's network ``module`` for all ``K``: shared or batched ``x`` → batched."""
        return _LAYERS[type(module)](self, module, x)

    def flow_forward(self, flow: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """A flow's ``forward`` for all ``K``: ``(K, B, D)`` → ``(K, B, D)``, logdet ``(K, B)``.

        The logdet is ``None`` for a volume-preserving layer (a shuffle).
        """
        return _FLOWS[type(flow)][0](self, flow, x)

    def flow_inverse(self, flow: nn.Module, z: Tensor) -> Tensor:
        """A flow's ``inverse`` for all ``K``, ``(K, B, D)``."""
        return _FLOWS[type(flow)][1](self, flow, z)


class StackedKnowledge(StackedModules):
    """``K`` knowledge types of a stage, with the evaluation methods of one.

    The same methods, with the same meaning, as :class:`~tzkgraph.model.nets.Knowledge`'s, each
    result with a leading dim ``K``; ``t`` is shared.
    """

    def encoder_logit(self, t: Tensor) -> Tensor:
        return nets.float32(self(self.template.encoder_discriminator, t).squeeze(-1))  # (K, B)

    def posterior(self, t: Tensor, e: int) -> tuple[Tensor, Tensor]:
        return self(self.template.encoder_posterior[e], t)  # 2 × (K, B, C)

    def decoder_logit(self, c: Tensor) -> Tensor:
        return nets.float32(self(self.template.decoder_discriminator, c).squeeze(-1))

    def decoder_gaussian(self, c: Tensor, e: int) -> tuple[Tensor, Tensor]:
        return self(self.template.decoder[e], c)

    def code_forward(self, c: Tensor) -> tuple[Tensor, Tensor]:
        u, logdet = self.flow_forward(self.template.code_flow, c)
        return u, logdet if logdet is not None else c.new_zeros(c.shape[:-1])

    def code_inverse(self, u: Tensor) -> Tensor:
        return self.flow_inverse(self.template.code_flow, u)


# --- structure ------------------------------------------------------------------------------------

def signature(module: nn.Module) -> Hashable:
    """What must agree for modules to be stacked: layer types and settings, tensor names and shapes.

    A module with a layer :class:`StackedModules` cannot run gets a signature of its own
    (it is never stacked).
    """
    if not stackable(module):
        return ("unstackable", id(module))
    layers = tuple((type(m), m.extra_repr()) for m in module.modules())
    tensors = tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in module.state_dict().items())
    return layers, tensors


def stackable(module: nn.Module) -> bool:
    """Whether :class:`StackedModules` can run every layer of ``module`` (convolutional nets as they are)."""
    as_they_are = {layer for net in module.modules() if _convolutional(net) for layer in net.modules()}
    for m in module.modules():
        if m is module or m in as_they_are:  # the root's methods run its submodules
            continue
        if type(m) not in _LAYERS and type(m) not in _FLOWS and type(m) not in _CONTAINERS:
            return False
    return True


def actnorms_settled(actnorms: Sequence[ActNorm]) -> bool:
    """No ActNorm will run its data-dependent initialisation on the next forward.

    True when each is initialised or is in eval mode (then it never initialises); see
    :meth:`ActNorm.settled`, which reads each one's ``initialized`` buffer until it is set
    (after ``load_state_dict`` too). So whether a stage's knowledge types run stacked
    depends on the buffers alone: a resumed run takes the same path, and computes the same
    numbers, as one never stopped.
    """
    return all(a.settled() for a in actnorms)


# --- layers: (stacked, template module, input) -> output -----------------------------------------

def _actnorm_log_scale(s: StackedModules, m: ActNorm) -> Tensor:
    """:meth:`ActNorm.effective_log_scale` for all ``K``, ``(K, C)``."""
    return actnorm_log_scale(s.tensor(m, "log_scale"), m.volume_preserving)


def _actnorm_forward(s: StackedModules, m: ActNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    """Vectors, shared ``(B, C)`` or ``(K, B, C)`` → ``(K, B, C)``, logdet ``(K, B)``."""
    bias, log_scale = s.tensor(m, "bias"), _actnorm_log_scale(s, m)  # (K, C)
    z = (x + bias.unsqueeze(1)) * log_scale.unsqueeze(1).exp()
    return z, log_scale.sum(-1, keepdim=True).expand(s.k, x.shape[-2])


def _actnorm_inverse(s: StackedModules, m: ActNorm, z: Tensor) -> Tensor:
    bias, log_scale = s.tensor(m, "bias"), _actnorm_log_scale(s, m)
    return z * (-log_scale).unsqueeze(1).exp() - bias.unsqueeze(1)


def _batched(s: StackedModules, x: Tensor) -> Tensor:
    """A vector input as ``(K, B, D)`` (a shared ``(B, D)`` expanded, no copy)."""
    return x if x.dim() == 3 else x.expand(s.k, *x.shape)


def _permute(x: Tensor, index: Tensor) -> Tensor:
    """``x[k, b, index[k]]`` for ``x`` ``(K, B, C)`` and ``index`` ``(K, C)``."""
    return torch.gather(x, 2, index.unsqueeze(1).expand(-1, x.shape[1], -1))


def _shuffle_forward(s: StackedModules, m: Shuffle, x: Tensor) -> tuple[Tensor, None]:
    return _permute(_batched(s, x), s.tensor(m, "perm")), None


def _shuffle_inverse(s: StackedModules, m: Shuffle, z: Tensor) -> Tensor:
    return _permute(_batched(s, z), s.tensor(m, "inv_perm"))


def _lu_log_s(s: StackedModules, m: InvConvLU) -> Tensor:
    """:meth:`InvConvLU.effective_log_s` for all ``K``, ``(K, C)``."""
    log_s = s.tensor(m, "log_s")
    return centred(log_s) if m.volume_preserving else log_s


def _lu_weight(s: StackedModules, m: InvConvLU) -> Tensor:
    """:meth:`InvConvLU.weight` for all ``K``, ``(K, C, C)``."""
    return lu_weight(*(s.tensor(m, name) for name in ("p", "lower", "upper", "lower_mask", "eye", "sign_s")),
                     _lu_log_s(s, m))


def _mix(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ Wᵀ`` per k, at the flow's own precision (as :func:`tzkgraph.model.flows.permute._mix`)."""
    with torch.autocast(x.device.type, enabled=False):
        return x @ weight.to(x.dtype).transpose(1, 2)


def _lu_forward(s: StackedModules, m: InvConvLU, x: Tensor) -> tuple[Tensor, Tensor]:
    x = _batched(s, x)
    logdet = _lu_log_s(s, m).sum(-1, keepdim=True).expand(s.k, x.shape[1])
    return _mix(x, _lu_weight(s, m)), logdet


def _lu_inverse(s: StackedModules, m: InvConvLU, z: Tensor) -> Tensor:
    return _mix(_batched(s, z), torch.linalg.inv(_lu_weight(s, m)))


def _shift_scale(s: StackedModules, m: AffineCoupling, x_a: Tensor) -> tuple[Tensor, Tensor]:
    """:meth:`AffineCoupling._shift_scale` for all ``K``: shift, log scale."""
    shift, raw = s(m.net, x_a).to(x_a.dtype).chunk(2, dim=-1)
    log_scale = coupling.coupling_log_scale(raw)  # (K, B, C_b)
    return shift, centred(log_scale) if m.volume_preserving else log_scale


def _coupling_forward(s: StackedModules, m: AffineCoupling, x: Tensor) -> tuple[Tensor, Tensor]:
    x_a, x_b = x[..., : m.split], x[..., m.split :]
    shift, log_scale = _shift_scale(s, m, x_a)
    return torch.cat([x_a, (x_b + shift) * log_scale.exp()], dim=-1), log_scale.sum(-1)


def _coupling_inverse(s: StackedModules, m: AffineCoupling, z: Tensor) -> Tensor:
    z_a, z_b = z[..., : m.split], z[..., m.split :]
    shift, log_scale = _shift_scale(s, m, z_a)
    return torch.cat([z_a, z_b * (-log_scale).exp() - shift], dim=-1)


def _sequence_forward(s: StackedModules, m: FlowSequence, x: Tensor) -> tuple[Tensor, Tensor | None]:
    logdet = None
    for flow in m.flows:
        x, ld = s.flow_forward(flow, x)
        if ld is not None:
            logdet = ld if logdet is None else logdet + ld
    return x, logdet


def _sequence_inverse(s: StackedModules, m: FlowSequence, z: Tensor) -> Tensor:
    for flow in reversed(m.flows):
        z = s.flow_inverse(flow, z)
    return z


def _linear(s: StackedModules, m: nn.Linear, x: Tensor) -> Tensor:
    weight = s.tensor(m, "weight").transpose(1, 2)  # (K, in, out)
    if m.bias is None:
        return torch.bmm(_batched(s, x), weight)
    return torch.baddbmm(s.tensor(m, "bias").unsqueeze(1), _batched(s, x), weight)


def _sequential(s: StackedModules, m: nn.Sequential, x: Tensor) -> Tensor:
    if _convolutional(m):  # once per module, on the shared image
        return torch.stack([peer(x) for peer in s._peers[m]])
    for layer in m:
        x = s(layer, x)
    return x


def _gaussian_head(s: StackedModules, m: nets.GaussianHead, x: Tensor) -> tuple[Tensor, Tensor]:
    return nets.gaussian_params(s(m.net, x))


_LAYERS: dict[type, Callable] = {
    nn.Linear: _linear,
    nn.Sequential: _sequential,
    nets._Swish: lambda s, m, x: F.silu(x),
    coupling._Swish: lambda s, m, x: F.silu(x),
    nets._InputNorm: lambda s, m, x: _actnorm_forward(s, m.norm, x)[0],
    nets.GaussianHead: _gaussian_head,
}
_FLOWS: dict[type, tuple[Callable, Callable]] = {
    ActNorm: (_actnorm_forward, _actnorm_inverse),
    Shuffle: (_shuffle_forward, _shuffle_inverse),
    InvConvLU: (_lu_forward, _lu_inverse),
    AffineCoupling: (_coupling_forward, _coupling_inverse),
    FlowSequence: (_sequence_forward, _sequence_inverse),
    VectorFlow: (_sequence_forward, _sequence_inverse),
}
_CONTAINERS = (nn.ModuleList,)  # no computation of their own


def _convolutional(m: nn.Module) -> bool:
    """A convolutional net: run as it is, once per module (see the module docstring)."""
    return isinstance(m, nn.Sequential) and any(isinstance(layer, nn.Conv2d) for layer in m)
