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

from tzkgraph.core.checkpoint import save_checkpoint
from tzkgraph.data.dataset import load_graph_data
from tzkgraph.core.distributed import setup
from tzkgraph.core.errors import TzkError
from tzkgraph.core.runtime import pick_device
from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.graph.plan import plan_phase
from tzkgraph.graph.model import TzKGraph
from tzkgraph.training.state import RunState, start_state
from tzkgraph.training.status import RunStatus, StopSignals
from tzkgraph.training.step import BatchSampler, Phase, objective_on, start_phase, train_step
from tzkgraph.use.sampling import write_sample_grids
from tzkgraph.spec.types import GraphSpec

__all__ = ["RunResult", "run"]


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


def _finite_line(line: dict[str, Any]) -> dict[str, Any]:
    """A metric line with non-finite values as ``None`` (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in line.items()}


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


def _put_average(phase: Phase, name: str, n: int, batch_size: int, step: int,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """Puts the phase's weight average in place of its last weights; the metric line comparing
    them: the objective of each on the same 8 training batches, with the same noise."""
    generator = torch.Generator().manual_seed(0)
    device = phase.average.params[0].device
    batches = [torch.randint(n, (batch_size,), generator=generator).to(device) for _ in range(8)]
    last = objective_on(phase, batches, step)
    phase.average.swap()
    average = objective_on(phase, batches, step)
    say(f"{name}: the weights' running average (train.ema) takes the last weights' place; "
        f"the objective on 8 training batches {last:.4g} -> {average:.4g}")
    return _finite_line({"step": step, "phase": name, "objective_last_weights": last,
                         "objective_average_weights": average})


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
    state = start_state(spec, model, ckpt_path, resume, fresh, say)
    if state is not None and state.finished:
        say(f"{run_dir}: already trained ({state.step} steps); --fresh retrains, "
            "and adding knowledge types to the YAML trains only those")
        return RunResult(run_dir, state.step, True)
    if state is not None:
        state.restore(model, generator)
    online = state.online if state else None
    phase_index, phase_step, step = (state.phase, state.phase_step, state.step) if state else (0, 0, 0)
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
    wrap = (lambda objective: DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None)) if job.enabled else None
    draw = BatchSampler(len(data), train.batch_size, generator, data.label_known, train.labelled_share)
    result = RunResult(run_dir, step, False)
    current: Phase | None = None  # the phase under way

    def checkpoint(finished: bool) -> None:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TzkError(f"step {step}: non-finite weights ({bad[0]}); stopped, the last good "
                           f"checkpoint {ckpt_path} is kept")
        if not job.is_main:
            return
        now = RunState.capture(spec, model, generator, phase=phase_index, phase_step=phase_step,
                               step=step, finished=finished, online=online,
                               phase_state=current.state_dict() if current is not None else None)
        save_checkpoint(ckpt_path, now.to_checkpoint())
        (run_dir / "graph.json").write_text(json.dumps(spec.to_dict(), indent=1))

    status = RunStatus(run_dir, enabled=job.is_main)
    signals = StopSignals()
    phase_name = train.phases[min(phase_index, len(train.phases) - 1)].name

    def stop(state: str, reason: str | None = None) -> None:
        status.write(state, step, phase_name, reason)

    # a graph the compiler cannot build runs eagerly (with torch's warning) instead of stopping
    # the run: seen once, a Triton failure on an H100 (torch 2.11, Triton 3.6). For this run only.
    compiling = (torch._dynamo.config.patch(suppress_errors=True) if train.compile
                 else contextlib.nullcontext())
    try:
        with signals.active(), compiling:
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
                current = start_phase(executor, params, lr=train.lr, warmup_steps=train.warmup,
                                      clip_grad=train.clip_grad, amp=use_amp, wrap=wrap,
                                      phase_steps=phase.steps, lr_decay=train.lr_decay, ema=train.ema)
                if state is not None and state.phase_state and state.phase == phase_index:
                    current.load_state_dict(state.phase_state)
                # the first step runs eagerly: ActNorm's data-dependent initialisation is host logic
                compiled = current.objective
                if train.compile:
                    compiled = torch.compile(current.objective,
                                             mode=None if train.compile is True else train.compile)
                loss_fn = current.objective
                bar = tqdm(total=phase.steps, initial=phase_step, desc=f"{spec.name}/{phase.name}",
                           unit="step", disable=not progress, dynamic_ncols=True)
                clock = _Throughput(train.batch_size)
                skipped = torch.zeros((), device=device)  # non-finite steps since the last log line
                since_log = 0
                while phase_step < phase.steps:
                    # the global batch, drawn alike on every process; each takes its share
                    index = draw().view(job.world_size, -1)[job.rank]
                    _, metrics, was_skipped = train_step(current, index, step, executor.draw_modes(), loss_fn)
                    skipped = skipped + was_skipped  # the host learns of it at the next log line
                    step, phase_step, since_log = step + 1, phase_step + 1, since_log + 1
                    loss_fn = compiled
                    clock.step()
                    bar.update(1)
                    last = phase_step == phase.steps
                    if step % train.log_every == 0 or last:
                        line = {"step": step, "phase": phase.name, "lr": current.scheduler.get_last_lr()[0]}
                        names = sorted(metrics)
                        values = job.mean(torch.stack([metrics[k].float() for k in names] + [skipped]))
                        *values, n_skipped = values.tolist()
                        line.update(zip(names, values))
                        line["skipped_steps"] = int(round(n_skipped))
                        line["clipped_fraction"] = current.clip.read()
                        if current.clip.scales is not None:
                            line["grad_norm_scale"] = current.clip.scale()
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
                    if last:  # the average takes the weights' place; the next phase starts afresh
                        if current.average is not None:
                            with clock.excluded():
                                log.write(_put_average(current, phase.name, len(data), train.batch_size, step, say))
                        phase_index, phase_step, current = phase_index + 1, 0, None
                    with clock.excluded():
                        if last:
                            checkpoint(finished=phase_index == len(train.phases))
                        elif stopping or signalled or (train.checkpoint_every
                                                       and step % train.checkpoint_every == 0):
                            checkpoint(finished=False)
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
