"""Sampling down a path of knowledge to images, z-space interpolation, and image grids on disk."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence, Union

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from tzkgraph.core.errors import TzkError
from tzkgraph.core.files import atomic_write
from tzkgraph.core.runtime import pick_device, seeded
from tzkgraph.graph.model import TzKGraph
from tzkgraph.spec.types import GraphSpec

__all__ = ["IMAGE_SUFFIXES", "Temperature", "valid_paths", "group_members", "parse_path", "parse_temperature",
           "descend", "known_given", "sample_path", "interpolate",
           "check_output", "save_grid", "write_sample_grids", "sample_to_files",
           "interpolate_to_file"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Temperature = Union[float, Mapping[str, float]]  #: one for every stage, or per stage (default 1.0)


def parse_temperature(text: str, spec: GraphSpec) -> Temperature:
    """``"0.7"`` (every stage) or ``"images=0.8,digits=1.0"`` (per stage; stages left out: 1.0).

    Raises:
        TzkError: not a number ``>= 0``, or an unknown stage.
    """
    def number(value: str, what: str) -> float:
        try:
            out = float(value)
        except ValueError:
            out = -1.0
        if not out >= 0 or math.isinf(out):
            raise TzkError(f"--temperature: {what} must be a number >= 0, got {value!r}")
        return out

    if "=" not in text:
        return number(text.strip(), "the temperature")
    levels = {}
    for item in text.split(","):
        stage, _, value = item.partition("=")
        stage = stage.strip()
        if stage not in spec.stage_names:
            raise TzkError(f"--temperature: unknown stage {stage!r} (stages: {', '.join(spec.stage_names)})")
        levels[stage] = number(value.strip(), f"{stage}'s temperature")
    return levels


def _at(temperature: Temperature, stage: str) -> float:
    """The temperature of ``stage``."""
    return float(temperature.get(stage, 1.0)) if isinstance(temperature, Mapping) else float(temperature)


def valid_paths(spec: GraphSpec) -> list[str]:
    """Every ``--path``: ``STAGE`` (its prior ``p(t)``), ``STAGE/KNOWLEDGE`` and ``STAGE/GROUP``
    (one row per member), in topological order."""
    return [path for name in spec.order
            for path in [name] + [f"{name}/{k}" for k in spec.stage(name).knowledge_names]
            + [f"{name}/{g}" for g in spec.stage(name).groups if g not in spec.stage(name).knowledge_names]]


def group_members(spec: GraphSpec, path: str) -> list[str] | None:
    """``digits/0..9`` → ``["digits/0", …, "digits/9"]``; ``None`` if ``path`` names no group."""
    stage, _, group = path.partition("/")
    members = spec.stage(stage).groups.get(group) if group else None
    if members is None or group in spec.stage(stage).knowledge_names:
        return None
    return [f"{stage}/{k}" for k in members]


def parse_path(spec: GraphSpec, path: str) -> tuple[str, str | None]:
    """``"digits/7"`` → ``("digits", "7")``; ``"images"`` → ``("images", None)``.

    Raises:
        TzkError: no such stage or knowledge; the message lists the valid paths.
    """
    if path not in valid_paths(spec):
        raise TzkError(f"--path: unknown path {path!r} (valid: {', '.join(valid_paths(spec))})")
    stage, _, knowledge = path.partition("/")
    return stage, knowledge or None


def descend(model: TzKGraph, spec: GraphSpec, stage: str, t: Tensor, temperature: Temperature = 1.0) -> Tensor:
    """Maps a stage's observation ``t`` down the graph to images.

    A child's ``t`` is the concatenation of its parents' codes; it is split
    into those codes and the walk continues down the FIRST parent: its code
    ``c`` gives ``t_parent ~ p(t_parent | e=1, c)`` through that parent's
    decoder, until a root stage (whose ``t`` is an image) is reached.

    Arguments:
        model: the trained graph.
        spec: its spec.
        stage: the stage ``t`` belongs to.
        t: ``(B, *t_shape)``.
        temperature: scales the decoders' Gaussian standard deviations (per stage: that
            stage's decoder's).

    Returns:
        ``(B, C, H, W)`` images in ``[-0.5, 0.5)`` (not clamped).
    """
    while not spec.stage(stage).is_root:
        parent, k = spec.parents(stage)[0]
        c = t[:, :spec.stage(parent).get(k).code_dim]  # the first parent's code
        t = model.stages[parent].decode(k, c, _at(temperature, parent))
        stage = parent
    return t


@torch.no_grad()
def sample_path(model: TzKGraph, spec: GraphSpec, path: str, n: int, temperature: Temperature = 1.0,
                guide: int = 0) -> Tensor:
    """Images sampled down a path: ancestral sampling of the trained hierarchy.

    ``STAGE/KNOWLEDGE``: the stage's ``t`` from its model given ``e = 1`` for that knowledge
    (and, in an exclusive group, ``e = 0`` for the others), ``M(t | ē)`` of
    :meth:`~tzkgraph.model.stage.TzKStage.sample_given` with ``guide`` candidates per
    component; then :func:`descend` to images. ``guide = 0`` draws from that knowledge's
    decoder alone instead (``c ~ p(c)``, ``t ~ p(t | e=1, c)``: one component of the model,
    faster). Where a child stage is the prior of that code (``images/mnist`` in
    mnist_digits), the code is drawn from the child's model. ``STAGE``: ``t ~ p(t)`` of its
    prior. ``temperature``: one for every stage, or per stage.

    Example:
        >>> images = sample_path(model, spec, "digits/7", 64, temperature=0.7)  # (64, 1, 32, 32)
    """
    stage, knowledge = parse_path(spec, path)
    child = spec.prior_of(stage, knowledge)
    if child is not None:  # the code's prior is the child's model: sample its t, then decode
        s = model.stages[child]
        t = s.sample_given({}, n, _at(temperature, child), guide) if guide else s.sample(n, None, _at(temperature, child))
        return descend(model, spec, child, t, temperature)
    s, level = model.stages[stage], _at(temperature, stage)
    if knowledge is None or not guide:
        return descend(model, spec, stage, s.sample(n, knowledge, level), temperature)
    return descend(model, spec, stage, s.sample_given(known_given(spec, stage, knowledge), n, level, guide),
                   temperature)


def known_given(spec: GraphSpec, stage: str, knowledge: str) -> dict[str, int]:
    """``e = 1`` for ``knowledge`` and, where it is in an exclusive group, ``e = 0`` for the others."""
    for group, members in spec.stage(stage).groups.items():
        if knowledge in members and group in spec.exclusive_groups(stage):
            return {name: int(name == knowledge) for name in members}
    return {knowledge: 1}


@torch.no_grad()
def interpolate(model: TzKGraph, stage: str, t: Tensor, steps: int = 8) -> Tensor:
    """Linear interpolation in the t-flow's latent between consecutive examples (the paper's Fig. 5).

    Arguments:
        model: the trained graph.
        stage: a stage whose ``t`` is ``t``.
        t: ``(M, *t_shape)`` examples, ``M >= 2``.
        steps: points per pair, both ends included (``>= 2``).

    Returns:
        ``(M - 1, steps, *t_shape)``: row ``i`` goes from ``t[i]`` to ``t[i + 1]``.
    """
    flow = model.stages[stage].t_flow
    z, _ = flow(t)  # (M, D)
    alpha = torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype)[None, :, None]  # (1, S, 1)
    path = (1 - alpha) * z[:-1, None] + alpha * z[1:, None]  # (M-1, S, D)
    x = flow.inverse(path.reshape(-1, z.shape[1]))
    return x.reshape(t.shape[0] - 1, steps, *t.shape[1:])


def check_output(path: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> Path:
    """Checks, before any work, that ``path`` has a known suffix and its folder is writable.

    Raises:
        TzkError: one line saying what is wrong.
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise TzkError(f"-o {path}: unknown file type {path.suffix or '(none)'!r} "
                       f"(known: {', '.join(suffixes)})")
    folder = path.parent
    if not folder.is_dir():
        raise TzkError(f"-o {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TzkError(f"-o {path}: not writable")
    return path


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Saves ``(B, C, H, W)`` images in ``[-0.5, 0.5)`` as one grid picture, atomically.

    Arguments:
        images: the images; mapped to ``[0, 1]`` (clamped).
        path: a ``.png`` / ``.jpg`` file.
        nrow: images per row (default: about ``sqrt(B)``).

    Raises:
        TzkError: the file cannot be written.
    """
    path = check_output(path)
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid((images.detach().float().cpu() + 0.5).clamp(0, 1), nrow=nrow, padding=2)
    try:
        return atomic_write(path, lambda tmp: save_image(grid, tmp))
    except ValueError as error:  # PIL: an extension it cannot write
        raise TzkError(f"-o {path}: cannot write ({error})") from None
    return path


def write_sample_grids(model: TzKGraph, spec: GraphSpec, run_dir: str | os.PathLike, step: int,
                       n: int = 16, temperature: float = 0.7, seed: int = 0) -> list[Path]:
    """Small sample grids of every path of the graph, for watching a run train.

    Writes ``run_dir/samples/step-<step>-<stage>-<knowledge>.png`` for every
    knowledge type of every stage (child stages walk down to images by
    :func:`descend`), and ``step-<step>-<stage>-prior.png`` for every stage's prior.
    Draws from a fixed ``seed`` without touching the global random state, and
    restores every module's train/eval mode. A path that fails to sample is
    skipped with a warning: this never raises.

    Returns:
        The files written.
    """
    written: list[Path] = []
    folder = Path(run_dir) / "samples"
    modes = {module: module.training for module in model.modules()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        model.eval()
        for path in valid_paths(spec):
            if group_members(spec, path) is not None:  # its members have grids of their own
                continue
            stage, knowledge = path.partition("/")[::2]
            out = folder / f"step-{step}-{stage}-{knowledge or 'prior'}.png"
            try:
                with seeded(seed, device):
                    images = sample_path(model, spec, path, n, temperature)
                if not torch.isfinite(images).all():
                    raise ValueError("non-finite samples")
                written.append(save_grid(images, out))
            except Exception as error:  # never stop a training run for a picture
                warnings.warn(f"step {step}: sampling {path} failed ({type(error).__name__}: {error})")
    except Exception as error:
        warnings.warn(f"step {step}: no sample grids ({type(error).__name__}: {error})")
    finally:
        for module, training in modes.items():
            module.train(training)
    return written


def sample_to_files(spec: GraphSpec, output: str | os.PathLike, path: str | None = None, n: int = 64,
                    temperature: Temperature = 0.7, seed: int = 0, guide: int = 0) -> list[Path]:
    """``tzkgraph sample``: loads the trained graph and saves a grid of samples.

    Arguments:
        spec: the graph.
        output: the picture; without ``path`` and with several roots, one
            picture per root, named ``<stem>-<root><suffix>``.
        path: ``STAGE/KNOWLEDGE`` or ``STAGE`` (see :func:`sample_path`), or
            ``STAGE/GROUP`` (one row of ``n`` per member, e.g. ``digits/0..9``);
            ``None`` samples every root stage's prior.
        n: samples per grid (per row for a group).
        temperature: scales every Gaussian base's standard deviation (one, or per stage).
        seed: seeds the draw.
        guide: ``M > 1``: codes from ``p(c | e=1)`` by resampling ``M`` draws (:func:`sample_path`).

    Raises:
        TzkError: unknown path, unwritable output, no trained checkpoint —
            checked before anything is sampled or written.
    """
    from tzkgraph.graph.rundir import load_trained

    output = check_output(output)
    if path is not None:
        parse_path(spec, path)
        jobs = [(path, output)]
    elif len(spec.roots) == 1:
        jobs = [(spec.roots[0], output)]
    else:
        jobs = [(root, output.with_name(f"{output.stem}-{root}{output.suffix}")) for root in spec.roots]
    if n < 1:
        raise TzkError(f"-n: need at least one sample, got {n}")
    if guide < 0 or guide > 100_000:
        raise TzkError(f"--guide: expected 0 (off) to 100000 draws per sample, got {guide}")
    device = pick_device(spec.train.device)
    model, _ = load_trained(spec, device)
    written = []
    for job_path, job_output in jobs:
        members = group_members(spec, job_path)
        with seeded(seed, device):
            if members is None:
                written.append(save_grid(sample_path(model, spec, job_path, n, temperature, guide), job_output))
            else:
                rows = [sample_path(model, spec, member, n, temperature, guide) for member in members]
                written.append(save_grid(torch.cat(rows), job_output, nrow=n))
    return written


def interpolate_to_file(spec: GraphSpec, output: str | os.PathLike, stage: str | None = None,
                        split: str = "test", indices: Sequence[int] = (0, 1, 2, 3), steps: int = 8) -> Path:
    """``tzkgraph interpolate``: z-space interpolation between data examples, one grid row per pair.

    Arguments:
        spec: the graph.
        output: the picture.
        stage: a root stage (default: the only root).
        split: ``"train"`` or ``"test"``.
        indices: examples of the split (sources concatenated in ``data.sources``
            order); row ``i`` interpolates ``indices[i]`` → ``indices[i + 1]``.
        steps: pictures per row, both ends included.

    Raises:
        TzkError: not a root stage, fewer than 2 indices or one out of range,
            unwritable output, no trained checkpoint.
    """
    from tzkgraph.data.dataset import load_graph_data
    from tzkgraph.graph.rundir import load_trained

    output = check_output(output)
    roots = spec.roots
    if stage is None:
        if len(roots) > 1:
            raise TzkError(f"--stage: the graph has several image stages, name one ({', '.join(roots)})")
        stage = roots[0]
    if stage not in roots:
        raise TzkError(f"--stage: {stage!r} is not a stage that observes images "
                       f"(those are: {', '.join(roots)})")
    if len(indices) < 2:
        raise TzkError("--index: give at least two examples to interpolate between")
    if steps < 2:
        raise TzkError(f"--steps: need at least 2 (both ends), got {steps}")
    device = pick_device(spec.train.device)
    model, _ = load_trained(spec, device)
    data = load_graph_data(spec.data, split, device=device)
    bad = [i for i in indices if not 0 <= i < len(data)]
    if bad:
        raise TzkError(f"--index: {bad[0]} is out of range (the {split} split has {len(data)} examples)")
    index = torch.tensor(list(indices), device=device)
    rows = interpolate(model, stage, data.observations(index, fixed=True), steps)  # (M-1, S, C, H, W)
    return save_grid(rows.flatten(0, 1), output, nrow=steps)
