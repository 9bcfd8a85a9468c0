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
from tzkgraph.data.dataset import GraphData, load_graph_data
from tzkgraph.core.distributed import Distributed, setup
from tzkgraph.core.errors import TzkError
from tzkgraph.core.runtime import pick_device
from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.graph.plan import plan_phase
from tzkgraph.graph.model import TzKGraph
from tzkgraph.graph.rundir import run_directory
from tzkgraph.model.density import bits_per_dim
from tzkgraph.training.state import RunState, start_state
from tzkgraph.training.status import RunStatus, StopSignals
from tzkgraph.training.step import BatchSampler, Phase, objective_on, start_phase, train_step
from tzkgraph.use.sampling import write_sample_grids
from tzkgraph.spec.types import GraphSpec, PhaseSpec

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


def _image_dims(spec: GraphSpec) -> dict[str, int]:
    """The stages whose observations are images, each with its observation's dimensions."""
    shapes = {name: spec.t_shape(name) for name in spec.stage_names}
    return {name: math.prod(shape) for name, shape in shapes.items() if len(shape) == 3}


def _bits_per_dim(line: dict[str, Any], image_dims: dict[str, int], bits: int) -> dict[str, float]:
    """``STAGE/bpd`` of each image stage in the metric ``line``: its ``STAGE/bound`` (the negative
    bound it optimises, nats per image), or ``−STAGE/log_p_t``, in bits per dimension."""
    figures = {}
    for name, dims in image_dims.items():
        if f"{name}/bound" in line:
            nll = line[f"{name}/bound"]
        elif f"{name}/log_p_t" in line:
            nll = -line[f"{name}/log_p_t"]
        else:  # not trained in this phase
            continue
        figures[f"{name}/bpd"] = float(bits_per_dim(nll, dims, bits))
    return figures


def _postfix(line: dict[str, Any], image_dims: dict[str, int]) -> str:
    """The progress bar's figures: each image stage's bits/dim (the loss where there is none)
    and the speed, e.g. ``images=3.42 bpd, 240 img/s``."""
    figures = [f"{name}={line[f'{name}/bpd']:.2f} bpd" for name in image_dims if f"{name}/bpd" in line]
    return ", ".join((figures or [f"loss={line['loss']:.4g}"]) + [f"{line['images_per_s']:.0f} img/s"])


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
    run_dir = run_directory(spec)
    job, device_name = setup(train.device)
    if train.batch_size % job.world_size:
        raise TzkError(f"train.batch_size: {train.batch_size} does not split over {job.world_size} processes")
    if not job.is_main:
        say, progress = (lambda _: None), False
    device = pick_device(device_name)
    if device.type == "cpu" and train.threads:
        torch.set_num_threads(train.threads)
    torch.manual_seed(spec.seed)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    model = TzKGraph(spec).to(device)
    state = start_state(spec, model, run_dir / "checkpoint.pt", resume, fresh, say)
    if state is not None and state.finished:
        say(f"{run_dir}: already trained ({state.step} steps); --fresh retrains, "
            "and adding knowledge types to the YAML trains only those")
        return RunResult(run_dir, state.step, True)
    if state is not None:
        state.restore(model, generator)
    trainer = _Trainer(spec, job, device, model, generator, state, progress=progress, stop_after=stop_after,
                       say=say)
    return trainer.train()


class _Trainer:
    """One run under way: what it trains on, where it stands (phase, step), and what it leaves
    (log, status, checkpoints); :meth:`train` takes it through the phases.

    Arguments:
        spec, job, device, model, generator: the run's graph, processes, device, model and
            data generator (restored from ``state`` when resuming).
        state: the checkpoint a resumed run continues from (``None``: from the start).
        progress, stop_after, say: as :func:`run`'s.
    """

    def __init__(self, spec: GraphSpec, job: Distributed, device: torch.device, model: TzKGraph,
                 generator: torch.Generator, state: RunState | None, *, progress: bool,
                 stop_after: int | None, say: Callable[[str], None]):
        self.spec, self.train_spec, self.job, self.device = spec, spec.train, job, device
        self.model, self.generator = model, generator
        self.progress, self.stop_after, self.say = progress, stop_after, say
        self.resumed = state  # its phase continues mid-way (its optimizer state); None once done
        self.online = state.online if state else None
        self.phase_index, self.phase_step, self.step = (state.phase, state.phase_step, state.step) if state \
            else (0, 0, 0)
        self.run_dir = run_directory(spec)
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        self.data = self._load_data()
        if job.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = _Log(self.run_dir, self.step if state is not None else None, enabled=job.is_main)
        train = self.train_spec
        where = f"{job.world_size} processes" if job.enabled else str(device)
        say(f"training {spec.name} on {where}; run directory {self.run_dir}")
        self.use_amp = train.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.wrap = (lambda objective: DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)) if job.enabled else None
        self.draw = BatchSampler(len(self.data), train.batch_size, generator, self.data.label_known,
                                 train.labelled_share)
        self.result = RunResult(self.run_dir, self.step, False)
        self.current: Phase | None = None  # the phase under way
        self.status = RunStatus(self.run_dir, enabled=job.is_main)
        self.signals = StopSignals()
        self.phase_name = train.phases[min(self.phase_index, len(train.phases) - 1)].name
        self.skipped = torch.zeros((), device=device)  # non-finite steps since the last log line
        self.since_log = 0  # steps since the last log line
        self.image_dims = _image_dims(spec)  # the stages whose bits/dim the metric lines show
        self.image_bits = spec.data.image.bits if self.image_dims else 0

    def _load_data(self) -> GraphData:
        try:
            return load_graph_data(self.spec.data, "train", device=self.device)
        except TzkError as error:  # the data is missing: say so where the run would have been
            RunStatus(self.run_dir, enabled=self.job.is_main).write("failed", self.step, None, str(error))
            raise

    def _set_status(self, state: str, reason: str | None = None) -> None:
        self.status.write(state, self.step, self.phase_name, reason)

    # --- the run, phase by phase ------------------------------------------------------------

    def train(self) -> RunResult:
        """Every phase from where the run stands, to the end or to a stop; how it ended is left
        in ``status.json``, whatever ends it."""
        # a graph the compiler cannot build runs eagerly (with torch's warning) instead of stopping
        # the run: seen once, a Triton failure on an H100 (torch 2.11, Triton 3.6). For this run only.
        compiling = (torch._dynamo.config.patch(suppress_errors=True) if self.train_spec.compile
                     else contextlib.nullcontext())
        try:
            with self.signals.active(), compiling:
                self._set_status("running")
                while self.phase_index < len(self.train_spec.phases):
                    if self._run_phase(self.train_spec.phases[self.phase_index]):
                        return self.result
        except TzkError as error:
            self._set_status("failed", str(error))
            raise
        except KeyboardInterrupt:
            self._set_status("failed", f"interrupted at step {self.step} (a second Ctrl-C): "
                                       "no checkpoint of this step")
            raise
        except BaseException as error:
            self._set_status("failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            self.log.close()
        self._set_status("finished")
        self.result.step, self.result.finished, self.result.history = self.step, True, self.log.history
        self.say(f"done: {self.step} steps; checkpoint {self.ckpt_path}, metrics {self.log.path}")
        return self.result

    def _run_phase(self, phase: PhaseSpec) -> bool:
        """Trains ``phase`` from its current step to its end; whether the run stopped in it."""
        self.phase_name = phase.name
        trainable = self.spec.trainable(phase)
        if self.online is not None:
            trainable = trainable & frozenset(self.online)
        if not trainable or self.phase_step >= phase.steps:  # the latter: resumed with fewer steps
            self.say(f"phase {phase.name}: nothing new to train, skipped" if not trainable else
                     f"phase {phase.name}: {self.phase_step} of its {phase.steps} steps done already, ended")
            self.phase_index, self.phase_step = self.phase_index + 1, 0
            return False
        executor, compiled = self._start_phase(phase, trainable)
        # the first step runs eagerly: ActNorm's data-dependent initialisation is host logic
        loss_fn = self.current.objective
        bar = tqdm(total=phase.steps, initial=self.phase_step, desc=f"{self.spec.name}/{phase.name}",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        clock = _Throughput(self.train_spec.batch_size)
        self.skipped, self.since_log = torch.zeros((), device=self.device), 0
        while self.phase_step < phase.steps:
            metrics = self._train_step(executor, loss_fn)
            loss_fn = compiled
            clock.step()
            bar.update(1)
            last = self.phase_step == phase.steps
            if self.step % self.train_spec.log_every == 0 or last:
                self._log_line(phase, metrics, clock, bar)
            stopping = self.stop_after is not None and self.step >= self.stop_after
            signalled = self.signals.received is not None and not self.job.enabled
            if last:  # the average takes the weights' place; the next phase starts afresh
                self._end_phase(phase, clock)
            with clock.excluded():
                self._checkpoint_and_samples(last, stopping, signalled)
            if self._should_stop(stopping, signalled, bar):
                return True
            if last:
                break
        bar.close()
        self.resumed = None
        return False

    def _start_phase(self, phase: PhaseSpec,
                     trainable: frozenset[str]) -> tuple[GraphExecutor, Callable[..., Any]]:
        """Sets ``trainable`` training and the rest frozen, and starts the phase's optimizer
        (continued where a resumed run left it); its executor and the objective to call from
        the second step on (compiled with ``train.compile``)."""
        train = self.train_spec
        params = self.model.set_trainable(trainable)  # and frozen parts in eval mode
        plan = plan_phase(self.spec, trainable)
        executor = GraphExecutor(self.model, self.data, plan, train.cache_dir, progress=self.progress)
        self.result.caches_built += executor.caches_built
        self.result.trained_parts = sorted(set(self.result.trained_parts) | trainable)
        self.current = start_phase(executor, params, lr=train.lr, warmup_steps=train.warmup,
                                   clip_grad=train.clip_grad, amp=self.use_amp, wrap=self.wrap,
                                   phase_steps=phase.steps, lr_decay=train.lr_decay, ema=train.ema)
        if self.resumed is not None and self.resumed.phase_state and self.resumed.phase == self.phase_index:
            self.current.load_state_dict(self.resumed.phase_state)
        compiled = self.current.objective
        if train.compile:
            compiled = torch.compile(self.current.objective,
                                     mode=None if train.compile is True else train.compile)
        return executor, compiled

    def _train_step(self, executor: GraphExecutor, loss_fn: Callable[..., Any]) -> dict[str, torch.Tensor]:
        """One step on a batch; its metrics (on the device)."""
        # the global batch, drawn alike on every process; each takes its share
        index = self.draw().view(self.job.world_size, -1)[self.job.rank]
        _, metrics, was_skipped = train_step(self.current, index, self.step, executor.draw_modes(), loss_fn)
        self.skipped = self.skipped + was_skipped  # the host learns of it at the next log line
        self.step, self.phase_step, self.since_log = self.step + 1, self.phase_step + 1, self.since_log + 1
        return metrics

    def _end_phase(self, phase: PhaseSpec, clock: _Throughput) -> None:
        """The phase's weight average (``train.ema``) takes the weights' place; the next phase is due."""
        if self.current.average is not None:
            with clock.excluded():
                self.log.write(_put_average(self.current, phase.name, len(self.data),
                                            self.train_spec.batch_size, self.step, self.say))
        self.phase_index, self.phase_step, self.current = self.phase_index + 1, 0, None

    # --- log line, checkpoint, stop ---------------------------------------------------------

    def _log_line(self, phase: PhaseSpec, metrics: dict[str, torch.Tensor], clock: _Throughput,
                  bar: Any) -> None:
        """Logs the step's metric line (averaged over processes) and shows it on the bar.

        Raises:
            TzkError: every step since the last line was skipped (the loss is NaN/Inf).
        """
        current = self.current
        line = {"step": self.step, "phase": phase.name, "lr": current.scheduler.get_last_lr()[0]}
        names = sorted(metrics)
        values = self.job.mean(torch.stack([metrics[k].float() for k in names] + [self.skipped]))
        *values, n_skipped = values.tolist()
        line.update(zip(names, values))
        line.update(_bits_per_dim(line, self.image_dims, self.image_bits))
        line["skipped_steps"] = int(round(n_skipped))
        line["clipped_fraction"] = current.clip.read()
        if current.clip.scales is not None:
            line["grad_norm_scale"] = current.clip.scale()
        line.update(clock.read())  # after .tolist(): the device has caught up
        self.result.skipped_steps += line["skipped_steps"]
        if line["skipped_steps"] >= self.since_log:
            raise TzkError(f"step {self.step} (phase {phase.name}): the loss became NaN/Inf at every step "
                           f"since step {self.step - self.since_log}; stopped, the last good checkpoint "
                           f"{self.ckpt_path} is kept (try a lower train.lr or a longer train.warmup)")
        self.log.write(_finite_line(line))
        self.skipped, self.since_log = torch.zeros((), device=self.device), 0
        bar.set_postfix_str(_postfix(line, self.image_dims))
        self._set_status("running")

    def _checkpoint_and_samples(self, last: bool, stopping: bool, signalled: bool) -> None:
        """A checkpoint where one is due (a phase's end, a stop, ``train.checkpoint_every``), and
        sample grids where they are (``train.sample_every``, the run's end; not when signalled)."""
        train, finished = self.train_spec, self.phase_index == len(self.train_spec.phases)
        if last:
            self._checkpoint(finished=finished)
        elif stopping or signalled or (train.checkpoint_every and self.step % train.checkpoint_every == 0):
            self._checkpoint(finished=False)
        if self.job.is_main and train.sample_every and not signalled and (
                self.step % train.sample_every == 0 or (last and finished)):
            # pictures of progress; RNG untouched
            write_sample_grids(self.model, self.spec, self.run_dir, self.step)

    def _checkpoint(self, finished: bool) -> None:
        """Writes the run's state (on rank 0), after checking that the weights are finite.

        Raises:
            TzkError: a weight is not finite (the last good checkpoint is kept).
        """
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TzkError(f"step {self.step}: non-finite weights ({bad[0]}); stopped, the last good "
                           f"checkpoint {self.ckpt_path} is kept")
        if not self.job.is_main:
            return
        now = RunState.capture(self.spec, self.model, self.generator, phase=self.phase_index,
                               phase_step=self.phase_step, step=self.step, finished=finished,
                               online=self.online,
                               phase_state=self.current.state_dict() if self.current is not None else None)
        save_checkpoint(self.ckpt_path, now.to_checkpoint())
        (self.run_dir / "graph.json").write_text(json.dumps(self.spec.to_dict(), indent=1))

    def _should_stop(self, stopping: bool, signalled: bool, bar: Any) -> bool:
        """Whether the run stops here (``--stop-after`` reached, or a signal before the last
        phase ended), the checkpoint written; if so, it says so and fills in the result."""
        result = self.result
        if signalled and self.phase_index < len(self.train_spec.phases):
            bar.close()
            received = self.signals.received
            self._set_status("stopped", f"{received} received: checkpoint written at step {self.step}")
            self.say(f"stopped by {received} at step {self.step}, checkpoint {self.ckpt_path}; "
                     "continue with --resume")
            result.step, result.history, result.stopped_by = self.step, self.log.history, received
            return True
        if stopping:
            bar.close()
            self._set_status("stopped", f"--stop-after {self.stop_after}")
            self.say(f"stopped at step {self.step}; continue with --resume")
            result.step, result.history = self.step, self.log.history
            return True
        return False
