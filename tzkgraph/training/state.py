"""Where a run stands, to and from its checkpoint, and how a run starts from what is on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tzkgraph.core.checkpoint import load_checkpoint, rng_state, set_rng_state
from tzkgraph.core.errors import TzkError
from tzkgraph.graph.model import TzKGraph, load_matching
from tzkgraph.spec.types import GraphSpec, canonical_json

__all__ = ["RunState", "graph_identity", "start_state"]


def graph_identity(spec_dict: dict[str, Any]) -> str:
    """The parts of a spec that define the model and its data (not training settings)."""
    return canonical_json({k: v for k, v in spec_dict.items() if k != "train"})


@dataclass
class RunState:
    """Everything a run needs to continue exactly: the position, the weights, the RNG, the phase's optimizer.

    ``phase_state`` is :meth:`tzkgraph.training.step.Phase.state_dict` of the phase under way
    (``None`` between phases: the next one starts a fresh optimizer). ``online`` lists the
    parts a run of a grown graph trains (online knowledge); ``new_run`` marks a state made
    from another graph's checkpoint, whose RNG is not continued.
    """

    spec: dict[str, Any]
    model: dict[str, torch.Tensor]
    phase: int = 0
    phase_step: int = 0
    step: int = 0
    finished: bool = False
    online: list[str] | None = None
    rng: dict[str, Any] | None = None
    phase_state: dict[str, Any] | None = None
    new_run: bool = False

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's entries (what :func:`tzkgraph.core.checkpoint.save_checkpoint` writes)."""
        phase = self.phase_state or {}
        return {"spec": self.spec, "model": self.model, "phase": self.phase,
                "phase_step": self.phase_step, "step": self.step, "finished": self.finished,
                "online": self.online, "rng": self.rng, "optimizer": phase.get("optimizer"),
                "scheduler": phase.get("scheduler"), "clip_scales": phase.get("clip_scales"),
                "average": phase.get("average")}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> RunState:
        """From a checkpoint's entries (older ones, with one clip norm or none, or no weight
        average, included)."""
        phase_state = None
        if state.get("optimizer"):
            phase_state = {"optimizer": state["optimizer"], "scheduler": state["scheduler"],
                           "clip_scales": state.get("clip_scales"), "average": state.get("average")}
        return cls(spec=state["spec"], model=state["model"], phase=int(state.get("phase", 0)),
                   phase_step=int(state.get("phase_step", 0)), step=int(state.get("step", 0)),
                   finished=bool(state.get("finished", False)), online=state.get("online"),
                   rng=state.get("rng"), phase_state=phase_state)

    @classmethod
    def capture(cls, spec: GraphSpec, model: TzKGraph, generator: torch.Generator, *, phase: int,
                phase_step: int, step: int, finished: bool, online: list[str] | None,
                phase_state: dict[str, Any] | None) -> RunState:
        """The state of a live run (weights and RNG as they are now)."""
        return cls(spec.to_dict(), model.state_dict(), phase, phase_step, step, finished, online,
                   rng_state(generator), phase_state)

    def restore(self, model: TzKGraph, generator: torch.Generator) -> None:
        """Loads the weights into ``model`` and, for a continued run, the RNG states."""
        model.load_state_dict(self.model)
        if self.rng is not None and not self.new_run:
            set_rng_state(self.rng, generator)


def start_state(spec: GraphSpec, model: TzKGraph, ckpt_path: Path, resume: bool, fresh: bool,
                say: Callable[[str], None]) -> RunState | None:
    """Decides how a run starts from what is on disk; returns the state to continue, if any.

    ``None`` starts from the beginning (after ``train.init_from``'s weights, if set). A
    finished run of the same graph is returned as is; an unfinished one needs ``--resume``
    or ``--fresh``; a checkpoint of a smaller graph whose weights all fit continues as
    online knowledge (only the new parts train).

    Raises:
        TzkError: what is on disk does not fit what was asked.
    """
    if fresh or not ckpt_path.exists():
        if resume:
            raise TzkError(f"--resume: no checkpoint at {ckpt_path} to resume")
        if spec.train.init_from:
            init = load_checkpoint(spec.train.init_from)
            new, mismatched = load_matching(model, init["model"])
            if mismatched:
                raise TzkError(f"train.init_from: {spec.train.init_from} has other shapes for "
                               f"{len(mismatched)} weights (e.g. {mismatched[0]})")
            say(f"initialised from {spec.train.init_from} ({len(new)} new weights)")
        return None
    state = RunState.from_checkpoint(load_checkpoint(ckpt_path))
    same_graph = graph_identity(state.spec) == graph_identity(spec.to_dict())
    if resume:
        if not same_graph and not state.online:
            raise TzkError(f"--resume: {ckpt_path} holds a different graph than {spec.source}; "
                           "use --fresh to start over")
        return state
    if same_graph:
        if state.finished:
            return state
        raise TzkError(f"{ckpt_path}: an unfinished run (step {state.step}) of this graph is there: "
                       "pass --resume to continue it or --fresh to start over")
    # The graph changed: online knowledge when the old weights all fit the new graph.
    new, mismatched = load_matching(model, state.model)
    removed = [k for k in state.model if k not in model.state_dict()]
    if mismatched or removed or not new:
        what = (f"{len(mismatched)} weights change shape" if mismatched else
                f"{len(removed)} weights are gone" if removed else "no new part to train")
        raise TzkError(f"{ckpt_path}: holds a run of a different graph ({what}); "
                       "pass --fresh to replace it, or set train.out_dir")
    online = sorted({model.part_of(k) for k in new})
    say(f"online knowledge: keeping every trained weight, training only {', '.join(online)}")
    return RunState(spec=spec.to_dict(), model=model.state_dict(), step=state.step, online=online,
                    rng=state.rng, new_run=True)
