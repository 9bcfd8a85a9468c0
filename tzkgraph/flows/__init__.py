"""Invertible flows; ``forward`` goes data → latent and returns ``(z, logdet)``."""

from .actnorm import ActNorm
from .base import Flow, FlowSequence, sum_except_batch
from .coupling import AffineCoupling
from .elementwise import Squeeze, SymLog
from .glow import PERMUTATIONS, Glow, VectorFlow, flow_step
from .permute import InvConvLU, Shuffle

__all__ = [
    "ActNorm", "AffineCoupling", "Flow", "FlowSequence", "Glow", "InvConvLU",
    "PERMUTATIONS", "Shuffle", "Squeeze", "SymLog", "VectorFlow", "flow_step",
    "sum_except_batch",
]
