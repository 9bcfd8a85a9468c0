"""One training phase of a graph: what to compute, what to cache, and the summed loss."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from tzkgraph.graph.cache import FORMAT_VERSION, LatentCache, hash_module, hash_tensors
from tzkgraph.data.dataset import GraphData
from tzkgraph.core.distributed import current
from tzkgraph.graph.model import TzKGraph
from tzkgraph.graph.plan import PhasePlan
from tzkgraph.spec.types import spec_hash

__all__ = ["GraphExecutor"]


class GraphExecutor:
    """Evaluates a phase's objective on a batch of example indices.

    Frozen root parts are computed once over the dataset and cached in HDF5
    (:class:`~tzkgraph.graph.cache.LatentCache`); the arrays then live on the data's
    device. Examples flow down an edge ``A/k → B`` only where ``e_k = 1``: a
    child stage sees every example of the batch with weight ``Π P(e_parent = 1)``
    (static shapes, no data-dependent indexing). A child is the prior of the codes it
    observes: it reads the parents' reparameterised draws ``c ~ q(c | e=1, t)``, and its
    bound enters the sum where the parent's ``E_q log p(c)`` was: in the parent's decoder
    half ``½ log p_dec``, a mean over its ``K`` knowledge types — at ``1/(2K)`` of the
    parent's coefficient, so that the sum is one bound on the joint (docs/objective.md).

    Arguments:
        model: the graph's stages.
        data: the training split, on the training device.
        plan: the phase's plan.
        cache_dir: folder of the HDF5 caches.
        batch_size: examples per batch when building a cache.
        progress: show progress bars while building caches.
        use_cache: ``False`` recomputes the frozen parts every step instead
            (same results; what ``tools/bench_cache.py`` compares against).
    """

    def __init__(self, model: TzKGraph, data: GraphData, plan: PhasePlan, cache_dir: str | Path,
                 batch_size: int = 256, progress: bool = True, use_cache: bool = True):
        self.model, self.data, self.plan = model, data, plan
        self.spec = model.spec
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.progress = progress
        self.present = {  # stage -> (N, K)
            s.name: torch.stack([data.present(k.present).float() for k in s.knowledge]
                                + [data.labels.new_zeros(len(data), dtype=torch.float32)], 1)[:, :-1]
            for s in self.spec.stages}
        self.observed = {  # stage -> (N, K) bool: whether e is known (data.labelled)
            s.name: torch.stack([data.observed(k.present) for k in s.knowledge]
                                + [data.labels.new_ones(len(data), dtype=torch.bool)], 1)[:, :-1]
            for s in self.spec.stages}
        self.caches_built: list[str] = []
        self.flow_cache: dict[str, tuple[Tensor, Tensor]] = {}
        self.code_cache: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
        self._data_hash: str | None = None
        self.use_cache = use_cache
        if use_cache:
            for name in sorted(plan.cached_flow):
                self._build_flow_cache(name)
            for name in sorted(plan.cached_codes):
                self._build_code_cache(name)

    # --- caches ---------------------------------------------------------------------------

    def _key(self, stage: str, what: str, module: torch.nn.Module) -> str:
        if self._data_hash is None:
            d = self.data
            self._data_hash = hash_tensors([d.images, d.labels, d.source_index])
        return spec_hash({
            "format": FORMAT_VERSION, "what": what, "stage": self.spec.stage(stage).to_dict(),
            "t_shape": list(self.spec.t_shape(stage)), "weights": hash_module(module),
            "data": self.spec.data.images_dict(), "data_hash": self._data_hash,
            "dequant_seed": self.data.dequant_seed,
        })

    def _cache(self, stage: str, what: str, module: torch.nn.Module, compute) -> dict[str, Tensor]:
        key = self._key(stage, what, module)
        cache = LatentCache(self.cache_dir / self.spec.name / f"{stage}.{what}.h5", key)
        job = current()
        if job.is_main:  # rank 0 builds, the other processes wait, then read
            arrays = cache.get_or_build(compute, len(self.data), self.batch_size,
                                        description=f"caching {stage}/{what}", progress=self.progress)
            job.barrier()
        else:
            job.barrier()
            arrays = cache.load()
            if arrays is None:
                raise RuntimeError(f"rank {job.rank}: cache {cache.path} missing after rank 0 built it "
                                   "(is train.cache_dir on storage every process sees?)")
        if cache.built:
            self.caches_built.append(f"{stage}/{what}")
        device = self.data.images.device
        return {k: v.to(device) for k, v in arrays.items()}

    def _build_flow_cache(self, name: str) -> None:
        stage = self.model.stages[name]

        def compute(index: Tensor) -> dict[str, Tensor]:
            z, logdet = stage.t_flow(self.data.observations(index.to(self.data.images.device), fixed=True))
            return {"z": z, "logdet": logdet}

        arrays = self._cache(name, "t_flow", stage.t_flow, compute)
        self.flow_cache[name] = (arrays["z"], arrays["logdet"])

    def _build_code_cache(self, name: str) -> None:
        stage = self.model.stages[name]
        emitted = self.plan.emit[name]

        def compute(index: Tensor) -> dict[str, Tensor]:
            t = stage.reads(self.data.observations(index.to(self.data.images.device), fixed=True))
            out = {}
            for k in emitted:
                out[f"{k}.mean"], out[f"{k}.log_std"] = stage.knowledge[k].posterior(t, 1)
                out[f"{k}.logit"] = stage.knowledge[k].encoder_logit(t)
            return out

        arrays = self._cache(name, "codes", stage, compute)
        self.code_cache[name] = {k: (arrays[f"{k}.mean"], arrays[f"{k}.log_std"], arrays[f"{k}.logit"])
                                 for k in emitted}

    def _frozen_latent(self, name: str, t: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        if self.use_cache:
            z, logdet = self.flow_cache[name]
            return z[index], logdet[index]
        with torch.no_grad():
            return self.model.stages[name].t_flow(t)

    def _frozen_child_inputs(self, name: str, t: Tensor | None, index: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """A frozen parent's draws and ``P(e = 1)`` for its children (from the code cache, or ``t``)."""
        stage, spec = self.model.stages[name], self.spec.stage(name)
        out = {}
        for k in self.plan.emit[name]:
            col = spec.knowledge_names.index(k)
            e, observed = self.present[name][index, col], self.observed[name][index, col]
            with torch.no_grad():
                if self.use_cache and name in self.plan.cached_codes:
                    mean, log_std, logit = (a[index] for a in self.code_cache[name][k])
                    out[k] = stage.child_inputs(k, None, e, observed, (mean, log_std), logit)
                else:
                    out[k] = stage.child_inputs(k, t, e, observed)
        return out

    # --- the objective --------------------------------------------------------------------

    def draw_modes(self) -> dict[str, str]:
        """Per loss stage, where this batch's codes come from: ``"encoder"`` or ``"decoder"``, ½ each.

        Drawn on the host (torch's CPU generator) before the step, so that the
        step itself has no data-dependent Python branch (``torch.compile`` traces
        it whole, once per combination).
        """
        draws = torch.rand(len(self.plan.loss_stages)).tolist()
        return {name: "encoder" if u < 0.5 else "decoder" for name, u in zip(self.plan.loss_stages, draws)}

    def loss(self, index: Tensor, step: int = 0,
             modes: dict[str, str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The sum of the phase's stage losses on examples ``index`` at training ``step``, and metrics.

        Each stage's loss is a sum over the batch divided by its size, so the total is a
        joint per example: the root's terms, plus a child's where the example reaches it.

        ``modes``: per loss stage, the code source (see :meth:`draw_modes`; drawn here if not given).
        """
        if modes is None:
            modes = self.draw_modes()
        total = bound = None
        metrics: dict[str, Tensor] = {}
        weights: dict[str, Tensor] = {}  # stage -> (B,) P(the example reaches it)
        scale: dict[str, float] = {}  # stage -> its bound's coefficient in the sum
        emitted: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}  # stage -> k -> (draw, P(e_k = 1))
        for name in self.plan.compute:
            spec, stage = self.spec.stage(name), self.model.stages[name]
            t, weight, scale[name] = self._observation(name, index, step, weights, emitted, scale)
            weights[name] = weight
            if name not in self.plan.loss_stages:
                emitted[name] = self._frozen_child_inputs(name, t, index)
                continue
            z = logdet = None
            if name in self.plan.cached_flow:
                z, logdet = self._frozen_latent(name, t, index)
            out = _named(name, stage.loss, t, self.present[name][index], self.observed[name][index],
                         z=z, logdet=logdet, active=self.plan.active[name], mode=modes[name],
                         weight=None if spec.is_root else weight, emit_codes=self.plan.emit[name])
            loss, stage_bound = scale[name] * out.loss, scale[name] * out.metrics["bound"]
            total = loss if total is None else total + loss
            bound = stage_bound if bound is None else bound + stage_bound
            metrics.update({f"{name}/{k}": v for k, v in out.metrics.items()})
            emitted[name] = {k: (out.codes[k], out.present[k]) for k in self.plan.emit[name]}
        metrics["loss"] = total.detach()  # the objective differentiated: the stages' weighted sum
        metrics["bound"] = bound  # the negative bound on the joint, summed the same way
        return total, metrics

    def _observation(self, name: str, index: Tensor, step: int, weights: dict[str, Tensor],
                     emitted: dict[str, dict[str, tuple[Tensor, Tensor]]],
                     scale: dict[str, float]) -> tuple[Tensor | None, Tensor, float]:
        """A stage's ``t`` on the batch, the examples' weights and the stage's coefficient.

        A root observes images (``None`` when only cached codes are needed); a child the
        concatenated draws of its parents' codes, with gradient, weighted by
        ``Π P(e_parent = 1)``, at ``1/(2K)`` of its parent's coefficient (``K`` the parent's
        knowledge types in the objective; of several parents, the smallest).
        """
        spec = self.spec.stage(name)
        weight = torch.ones_like(index, dtype=torch.float32)
        if spec.is_root:
            if name in self.plan.cached_codes and self.use_cache:
                return None, weight, 1.0  # the codes come from the cache: no images needed
            fixed = name in self.plan.cached_codes or name in self.plan.cached_flow
            return self.data.observations(index, fixed=fixed, step=step), weight, 1.0
        parts = []
        for parent, k in spec.parents:
            draw, p_present = emitted[parent][k]
            weight = weight * weights[parent] * p_present
            parts.append(draw)
        return torch.cat(parts, dim=1), weight, min(0.5 * scale[parent] / self._k(parent)
                                                    for parent, _ in spec.parents)

    def _k(self, name: str) -> int:
        """The number of knowledge types in a stage's ``log p_dec`` (all of them, if it is frozen)."""
        k = len(self.plan.active[name]) if name in self.plan.loss_stages else len(self.spec.stage(name).knowledge)
        return max(k, 1)


def _named(stage: str, function, *args, **kwargs):
    """``function(*args, **kwargs)``; a ``RuntimeError`` from it says which stage raised it.

    Eager only: under ``torch.compile`` the call is traced as it is.
    """
    if torch.compiler.is_compiling():
        return function(*args, **kwargs)
    try:
        return function(*args, **kwargs)
    except RuntimeError as error:
        raise RuntimeError(f"stage {stage!r}: {error}") from error
