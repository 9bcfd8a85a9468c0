"""Invertible flows; ``forward`` goes data → latent and returns ``(z, logdet)``."""

from .actnorm import ActNorm
from .base import Flow, FlowSequence, sum_except_batch
from .coupling import AffineCoupling, ConvNet, coupling_net
from .elementwise import Squeeze, SymLog
from .glow import PERMUTATIONS, PRIORS, Glow, SplitPrior, VectorFlow, flow_step
from .permute import InvConvLU, Shuffle

__all__ = [
    "ActNorm", "AffineCoupling", "ConvNet", "Flow", "FlowSequence", "Glow", "InvConvLU",
    "PERMUTATIONS", "PRIORS", "Shuffle", "SplitPrior", "Squeeze", "SymLog", "VectorFlow", "flow_step",
    "coupling_net", "sum_except_batch",
]
