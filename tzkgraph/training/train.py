"""``tzkgraph run``: train a graph's phases end to end, resumably."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from tzkgraph.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tzkgraph.data.dataset import load_graph_data
from tzkgraph.core.distributed import setup
from tzkgraph.core.errors import TzkError
from tzkgraph.core.runtime import pick_device
from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.graph.plan import plan_phase
from tzkgraph.graph.model import TzKGraph, load_matching
from tzkgraph.training.status import RunStatus, StopSignals
from tzkgraph.use.sampling import write_sample_grids
from tzkgraph.spec.types import GraphSpec, canonical_json

__all__ = ["RunResult", "run", "graph_identity"]


@dataclass
class RunResult:
    """What a finished (or stopped) run leaves behind."""

    run_dir: Path
    step: int
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)  # the metric lines logged now
    caches_built: list[str] = field(default_factory=list)
    trained_parts: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # the signal that stopped the run (a checkpoint was written)
    skipped_steps: int = 0  # steps whose gradient was not finite, not applied


def graph_identity(spec_dict: dict[str, Any]) -> str:
    """The parts of a spec that define the model and its data (not training settings)."""
    return canonical_json({k: v for k, v in spec_dict.items() if k != "train"})


def _finite_line(line: dict[str, Any]) -> dict[str, Any]:
    """A metric line with non-finite values as ``None`` (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in line.items()}


class _GradientClip:
    """Clips the global gradient norm at ``factor`` times its running mean, on the device.

    Scale-free (a stage's loss is in nats per example, so gradient norms run to thousands
    and differ from graph to graph): only outliers are cut. The mean is an exponential
    average (over about 100 steps) of the norms after clipping, started at the first
    step's; a non-finite norm leaves it alone (that step is skipped, see ``run``). It is
    kept in checkpoints, so a resumed run clips as an uninterrupted one.

    Arguments:
        factor: the multiple (0: no clipping).
        mean: the running mean to continue from, if any.
    """

    def __init__(self, factor: float, mean: torch.Tensor | None = None):
        self.factor, self.mean = factor, mean
        self.clipped: torch.Tensor | None = None  # steps clipped since the last read

    def __call__(self, grads: list[torch.Tensor], norm: torch.Tensor) -> None:
        if not self.factor:
            return
        finite = torch.isfinite(norm)
        if self.mean is None:
            self.mean = torch.where(finite, norm, torch.zeros_like(norm)).detach()
        first = self.mean == 0
        coef = torch.where(first | ~finite, torch.ones_like(norm),
                           (self.factor * self.mean / (norm + 1e-12)).clamp(max=1.0))
        torch._foreach_mul_(grads, coef)
        kept = torch.where(first, norm, 0.99 * self.mean + 0.01 * norm * coef)
        self.mean = torch.where(finite, kept, self.mean).detach()
        cut = (coef < 1).to(torch.float32)
        self.clipped = cut if self.clipped is None else self.clipped + cut

    def read(self) -> int:
        """Steps clipped since the last read (a host sync; call at log lines)."""
        n = 0 if self.clipped is None else int(self.clipped.item())
        self.clipped = None
        return n


def _warmup(steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / steps) if steps > 0 else 1.0


class _Objective(torch.nn.Module):
    """A phase's objective as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, executor: GraphExecutor):
        super().__init__()
        self.executor = executor
        self.model = executor.model  # registers the parameters

    def forward(self, index: torch.Tensor, step: int, modes: dict[str, str]):
        return self.executor.loss(index, step, modes)


class _Throughput:
    """Training speed between log lines, read where the host waits for the device anyway."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._restart()

    def _restart(self) -> None:
        self.steps, self.excluded_s, self.start = 0, 0.0, time.perf_counter()

    def step(self) -> None:
        self.steps += 1

    @contextlib.contextmanager
    def excluded(self):
        """Time inside (checkpoints, pictures) does not count as training."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded_s += time.perf_counter() - start

    def read(self) -> dict[str, float]:
        """``ms_per_step`` and global ``images_per_s`` since the last read."""
        seconds = max(time.perf_counter() - self.start - self.excluded_s, 1e-9)
        steps = max(self.steps, 1)
        self._restart()
        return {"ms_per_step": 1e3 * seconds / steps, "images_per_s": self.batch_size * steps / seconds}


class _Log:
    """Metric lines to ``metrics.jsonl`` (and TensorBoard when it is installed), on rank 0."""

    def __init__(self, run_dir: Path, keep_until: int | None, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self.tensorboard = None
        self.enabled = enabled
        if not enabled:
            return
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        if keep_until is not None:  # resuming: drop what the interrupted run logged after its checkpoint
            lines = [l for l in lines if l.strip() and json.loads(l)["step"] <= keep_until]
        else:
            lines = []
        self.path.write_text("".join(l + "\n" for l in lines))
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, line: dict[str, Any]) -> None:
        self.history.append(line)
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        if self.tensorboard is not None:
            for key, value in line.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key, value, line["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _start(spec: GraphSpec, model: TzKGraph, ckpt_path: Path, resume: bool, fresh: bool,
           say: Callable[[str], None]) -> dict[str, Any] | None:
    """Decides how a run starts from what is on disk; returns the checkpoint to continue, if any."""
    if fresh or not ckpt_path.exists():
        if resume:
            raise TzkError(f"--resume: no checkpoint at {ckpt_path} to resume")
        if spec.train.init_from:
            state = load_checkpoint(spec.train.init_from)
            new, mismatched = load_matching(model, state["model"])
            if mismatched:
                raise TzkError(f"train.init_from: {spec.train.init_from} has other shapes for "
                               f"{len(mismatched)} weights (e.g. {mismatched[0]})")
            say(f"initialised from {spec.train.init_from} ({len(new)} new weights)")
        return None
    state = load_checkpoint(ckpt_path)
    same_graph = graph_identity(state["spec"]) == graph_identity(spec.to_dict())
    if resume:
        if not same_graph and not state.get("online"):
            raise TzkError(f"--resume: {ckpt_path} holds a different graph than {spec.source}; "
                           "use --fresh to start over")
        return state
    if same_graph:
        if state["finished"]:
            return state
        raise TzkError(f"{ckpt_path}: an unfinished run (step {state['step']}) of this graph is there: "
                       "pass --resume to continue it or --fresh to start over")
    # The graph changed: online knowledge when the old weights all fit the new graph.
    new, mismatched = load_matching(model, state["model"])
    removed = [k for k in state["model"] if k not in model.state_dict()]
    if mismatched or removed or not new:
        what = (f"{len(mismatched)} weights change shape" if mismatched else
                f"{len(removed)} weights are gone" if removed else "no new part to train")
        raise TzkError(f"{ckpt_path}: holds a run of a different graph ({what}); "
                       "pass --fresh to replace it, or set train.out_dir")
    online = sorted({model.part_of(k) for k in new})
    say(f"online knowledge: keeping every trained weight, training only {', '.join(online)}")
    return dict(state, online=online, phase=0, phase_step=0, optimizer=None, finished=False,
                model=model.state_dict(), spec=spec.to_dict(), new_run=True)


def run(spec: GraphSpec, *, resume: bool = False, fresh: bool = False, progress: bool = True,
        stop_after: int | None = None, say: Callable[[str], None] = print) -> RunResult:
    """Trains ``spec``'s phases in order, checkpointing into ``out_dir/name``.

    Arguments:
        spec: the validated graph.
        resume: continue the run in the run directory (same step, optimizer, RNG).
        fresh: ignore (and, at the first checkpoint, replace) what the run directory holds.
        progress: show tqdm bars.
        stop_after: stop (with a checkpoint) once this global step is reached.
        say: where one-line messages go.
    """
    train = spec.train
    if train.init_from and not Path(train.init_from).is_file():
        raise TzkError(f"train.init_from: {train.init_from}: no such checkpoint")
    run_dir = Path(train.out_dir) / spec.name
    ckpt_path = run_dir / "checkpoint.pt"
    job, device_name = setup(train.device)
    if train.batch_size % job.world_size:
        raise TzkError(f"train.batch_size: {train.batch_size} does not split over {job.world_size} processes")
    if not job.is_main:
        say, progress = (lambda _: None), False
    device = pick_device(device_name)
    torch.manual_seed(spec.seed)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    model = TzKGraph(spec).to(device)
    state = _start(spec, model, ckpt_path, resume, fresh, say)
    if state is not None and state["finished"]:
        say(f"{run_dir}: already trained ({state['step']} steps); --fresh retrains, "
            "and adding knowledge types to the YAML trains only those")
        return RunResult(run_dir, state["step"], True)
    online = state.get("online") if state else None
    phase_index = state["phase"] if state else 0
    phase_step = state["phase_step"] if state else 0
    step = state["step"] if state else 0
    if state is not None:
        model.load_state_dict(state["model"])
        if not state.get("new_run"):
            set_rng_state(state["rng"], generator)
    try:
        data = load_graph_data(spec.data, "train", device=device)
    except TzkError as error:  # the data is missing: say so where the run would have been
        RunStatus(run_dir, enabled=job.is_main).write("failed", step, None, str(error))
        raise
    if job.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(run_dir, step if state is not None else None, enabled=job.is_main)
    where = f"{job.world_size} processes" if job.enabled else str(device)
    say(f"training {spec.name} on {where}; run directory {run_dir}")
    use_amp = train.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    result = RunResult(run_dir, step, False)

    def checkpoint(optimizer, scheduler, finished: bool) -> None:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TzkError(f"step {step}: non-finite weights ({bad[0]}); stopped, the last good "
                           f"checkpoint {ckpt_path} is kept")
        if not job.is_main:
            return
        save_checkpoint(ckpt_path, {
            "spec": spec.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "phase": phase_index, "phase_step": phase_step, "step": step, "finished": finished,
            "online": online, "rng": rng_state(generator),
            "clip_mean": clip.mean.cpu() if optimizer and clip.mean is not None else None})
        (run_dir / "graph.json").write_text(json.dumps(spec.to_dict(), indent=1))

    status = RunStatus(run_dir, enabled=job.is_main)
    signals = StopSignals()
    phase_name = train.phases[min(phase_index, len(train.phases) - 1)].name

    def stop(state: str, reason: str | None = None) -> None:
        status.write(state, step, phase_name, reason)

    try:
        with signals.active():
            stop("running")
            while phase_index < len(train.phases):
                phase = train.phases[phase_index]
                phase_name = phase.name
                trainable = spec.trainable(phase)
                if online is not None:
                    trainable = trainable & frozenset(online)
                if not trainable:
                    say(f"phase {phase.name}: nothing new to train, skipped")
                    phase_index, phase_step = phase_index + 1, 0
                    continue
                params = model.set_trainable(trainable)  # and frozen parts in eval mode
                plan = plan_phase(spec, trainable)
                executor = GraphExecutor(model, data, plan, train.cache_dir, progress=progress)
                result.caches_built += executor.caches_built
                result.trained_parts = sorted(set(result.trained_parts) | trainable)
                # fused: one kernel over all tensors instead of one loop per tensor (about 5x faster
                # on CPU); and it skips, on the device, a step whose gradient is not finite (found_inf)
                optimizer = torch.optim.Adam(params, lr=train.lr, fused=True)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(train.warmup))
                clip = _GradientClip(train.clip_grad)
                if state is not None and state.get("optimizer") and state["phase"] == phase_index:
                    optimizer.load_state_dict(state["optimizer"])
                    scheduler.load_state_dict(state["scheduler"])
                    if state.get("clip_mean") is not None:
                        clip.mean = state["clip_mean"].to(device)
                objective: torch.nn.Module = _Objective(executor)
                if job.enabled:
                    objective = DistributedDataParallel(
                        objective, device_ids=[device.index] if device.type == "cuda" else None)
                # the first step runs eagerly: ActNorm's data-dependent initialisation is host logic
                compiled = objective
                if train.compile:
                    # a graph the compiler cannot build runs eagerly (with torch's warning) instead of
                    # stopping the run: seen once, a Triton failure on an H100 (torch 2.11, Triton 3.6)
                    torch._dynamo.config.suppress_errors = True
                    compiled = torch.compile(objective, mode=None if train.compile is True else train.compile)
                loss_fn = objective
                bar = tqdm(total=phase.steps, initial=phase_step, desc=f"{spec.name}/{phase.name}",
                           unit="step", disable=not progress, dynamic_ncols=True)
                clock = _Throughput(train.batch_size)
                skipped = torch.zeros((), device=device)  # non-finite steps since the last log line
                since_log = 0
                while phase_step < phase.steps:
                    # the global batch, drawn alike on every process; each takes its share
                    index = torch.randint(len(data), (train.batch_size,), device=device, generator=generator)
                    index = index.view(job.world_size, -1)[job.rank]
                    modes = executor.draw_modes()
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss, metrics = loss_fn(index, step, modes)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    # An outlier batch whose gradient overflows is skipped, not applied: the
                    # weights stay finite, and the host learns of it at the next log line.
                    grads = [p.grad for p in params if p.grad is not None]
                    norm = torch.nn.utils.get_total_norm(grads)
                    clip(grads, norm)
                    optimizer.found_inf = (~torch.isfinite(norm)).to(torch.float32)
                    skipped = skipped + optimizer.found_inf
                    optimizer.step()
                    scheduler.step()
                    step, phase_step, since_log = step + 1, phase_step + 1, since_log + 1
                    loss_fn = compiled
                    clock.step()
                    bar.update(1)
                    last = phase_step == phase.steps
                    if step % train.log_every == 0 or last:
                        line = {"step": step, "phase": phase.name, "lr": scheduler.get_last_lr()[0]}
                        names = sorted(metrics)
                        values = job.mean(torch.stack([metrics[k].float() for k in names] + [skipped]))
                        *values, n_skipped = values.tolist()
                        line.update(zip(names, values))
                        line["skipped_steps"] = int(round(n_skipped))
                        line["clipped_steps"] = clip.read()
                        if clip.mean is not None:
                            line["grad_norm_mean"] = float(clip.mean)
                        line.update(clock.read())  # after .tolist(): the device has caught up
                        result.skipped_steps += line["skipped_steps"]
                        if line["skipped_steps"] >= since_log:
                            raise TzkError(f"step {step} (phase {phase.name}): the loss became NaN/Inf at "
                                           f"every step since step {step - since_log}; stopped, the last "
                                           f"good checkpoint {ckpt_path} is kept "
                                           "(try a lower train.lr or a longer train.warmup)")
                        log.write(_finite_line(line))
                        skipped, since_log = torch.zeros((), device=device), 0
                        if line.get("loss") is not None:
                            bar.set_postfix(loss=f"{line['loss']:.4g}",
                                            images_per_s=f"{line['images_per_s']:.0f}")
                        stop("running")
                    stopping = stop_after is not None and step >= stop_after
                    signalled = signals.received is not None and not job.enabled
                    if last:  # the next phase starts with a new optimizer
                        phase_index, phase_step = phase_index + 1, 0
                    with clock.excluded():
                        if last:
                            checkpoint(None, None, finished=phase_index == len(train.phases))
                        elif stopping or signalled or (train.checkpoint_every
                                                       and step % train.checkpoint_every == 0):
                            checkpoint(optimizer, scheduler, finished=False)
                        if job.is_main and train.sample_every and not signalled and (
                                step % train.sample_every == 0 or (last and phase_index == len(train.phases))):
                            write_sample_grids(model, spec, run_dir, step)  # pictures of progress; RNG untouched
                    if signalled and phase_index < len(train.phases):
                        bar.close()
                        stop("stopped", f"{signals.received} received: checkpoint written at step {step}")
                        say(f"stopped by {signals.received} at step {step}, checkpoint {ckpt_path}; "
                            "continue with --resume")
                        result.step, result.history, result.stopped_by = step, log.history, signals.received
                        return result
                    if stopping:
                        bar.close()
                        stop("stopped", f"--stop-after {stop_after}")
                        say(f"stopped at step {step}; continue with --resume")
                        result.step, result.history = step, log.history
                        return result
                    if last:
                        break
                bar.close()
                state = None
    except TzkError as error:
        stop("failed", str(error))
        raise
    except KeyboardInterrupt:
        stop("failed", f"interrupted at step {step} (a second Ctrl-C): no checkpoint of this step")
        raise
    except BaseException as error:
        stop("failed", f"{type(error).__name__}: {error}")
        raise
    finally:
        log.close()
    stop("finished")
    result.step, result.finished, result.history = step, True, log.history
    say(f"done: {step} steps; checkpoint {ckpt_path}, metrics {log.path}")
    return result
