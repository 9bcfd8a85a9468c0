"""A running average of a phase's weights (Polyak averaging, as Glow evaluates with).

A phase trained at a constant learning rate ends wherever its last step landed: the
default image flow's test bits/dim followed its last few steps, 2.78 to 3.64 bits/dim
for one recipe (docs/results.md). Once a phase only jitters about where it has got to, an
average over its last few hundred steps is the steadier estimate; while it still improves
the average lags (on the default pretraining, 0.995 was 0.10 bits/dim worse than the last
weights). ``train.ema`` keeps one per phase and, at the phase's end, puts it in place of
the trained weights, so everything after — frozen caches, the next phase, ``eval``,
``sample`` — uses the average.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["WeightAverage"]


class WeightAverage:
    """An exponential moving average of ``params``, updated after every optimizer step.

    The decay starts low and rises to ``decay``, ``min(decay, (1 + n) / (10 + n))`` at
    update ``n``, so the average forgets the weights of the first steps (the random
    initialisation, the ActNorms' data-dependent start) instead of anchoring to them.

    Arguments:
        params: the phase's trainable parameters, in a fixed order (a checkpoint follows it).
        decay: the asymptotic decay, e.g. 0.999 (an average over about 1000 steps).
    """

    def __init__(self, params: list[Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.params, self.decay = list(params), decay
        self.shadow: list[Tensor] | None = None  # made at the first update
        self.updates = 0

    def rate(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """``shadow ← d·shadow + (1 − d)·params`` (the first update copies the params)."""
        if self.shadow is None:
            self.shadow = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.rate())
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges the parameters and the average (twice: back as they were)."""
        if self.shadow is None:
            return
        for p, s in zip(self.params, self.shadow):
            held = p.detach().clone()
            p.copy_(s)
            s.copy_(held)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, to continue the average exactly."""
        return {"decay": self.decay, "updates": self.updates,
                "shadow": None if self.shadow is None else [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state.get("shadow")
        if shadow is not None and [s.shape for s in shadow] != [p.shape for p in self.params]:
            raise ValueError("the checkpoint's weight average does not match the phase's parameters")
        self.updates = int(state.get("updates", 0))
        self.shadow = None if shadow is None else [s.to(p.device, p.dtype) for s, p in zip(shadow, self.params)]
