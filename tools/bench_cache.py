"""Benchmark training with the frozen-part cache against recomputing the frozen parts.

On a hierarchy (default ``graphs/mnist_digits.yaml``) two configurations are trained with
:class:`tzkgraph.graph.executor.GraphExecutor`, each in both of its modes, ``use_cache=True``
(frozen outputs read from the HDF5 cache, held on the device) and ``use_cache=False`` (the
frozen parts recomputed every step, under ``no_grad``):

- ``conditional`` — every root stage's t-flow frozen, everything else trains (mnist_digits'
  ``conditional`` phase, ``freeze: [images/flow]``): the image t-flow's ``z, log|det|`` come
  from the cache, or from the Glow every step;
- ``stage2`` — every root stage wholly frozen, only the other stages train (``digits``): the
  frozen image stage's code posteriors ``μ, log σ`` come from the cache, or from the image
  encoder posterior network every step (the t-flow is not needed at all).

A training step is the one ``tzkgraph run`` takes, ``tzkgraph.training.step.train_step``:
draw the batch's indices (``torch.randint``), ``executor.loss`` (bf16 autocast on CUDA when
``train.amp``), ``zero_grad``, backward, the gradient clip, Adam, the warm-up scheduler. Each mode has its own model and optimizer, built from the same seed;
the first batch's loss of the two modes is compared before anything is timed.

Measured:

- cache build time: every cache the configuration needs, built into a fresh folder
  (``--cache-dir`` for another), not part of the steps/s;
- steps/s: the modes alternate in blocks of about ``--block-s`` seconds, ``--reps`` times,
  after ``--warmup`` steps each, the order reversed every other repetition; every mode draws
  the same indices in a repetition. Medians over the blocks (and their range);
- a step's time by part (indices, forward, backward, Adam), synchronised between parts;
- peak memory, per mode in a fresh process (multiprocessing ``spawn``) that loads the data,
  the model and the (already built) cache, then trains ``--mem-steps`` steps:

  * ``step tensor`` — CPU: with ``torch.profiler(profile_memory=True)``, the highest running
    sum of CPU tensor allocations minus frees during one steady-state step, above its start;
    CUDA: ``max_memory_allocated`` over the steps minus ``memory_allocated`` after setup.
    The tensors a step needs on top of what it starts with (activations kept for backward,
    gradients, temporaries);
  * ``step RSS`` (CPU) — peak RSS over the steps (``VmHWM``, reset through
    ``/proc/self/clear_refs``) minus the RSS after setup: the same plus Adam's moments (made
    on the first step) and the allocator's slack;
  * ``setup`` / ``total`` — RSS (CUDA: allocated memory) after setup and at the peak; these
    include what a mode keeps resident: the cache, in ``cached``.

Ratios: steps/s of a mode ÷ recomputed's; memory: recomputed's ÷ the mode's. The targets of
issue 5 are checked for ``stage2``: steps/s ≥ 50×, step memory ≥ 5× lower.

Every stage evaluates its identically configured knowledge types as one stacked batch
(``TzKStage(stacked=True)``, the default); ``--no-stack`` evaluates them one at a time, in
every mode (the figures before that optimisation).

Usage::

    python tools/bench_cache.py                            # both configurations, data.limit=5000
    python tools/bench_cache.py --set data.limit=null      # the graph's full data (slow build)
    python tools/bench_cache.py --config stage2 --batch-size 256 --reps 7 --no-stack
    python tools/bench_cache.py --threads 1 --profile      # + torch.profiler's top ops, cached step
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.data.dataset import GraphData, load_graph_data
from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.graph.plan import plan_phase
from tzkgraph.graph.model import TzKGraph, load_matching
from tzkgraph.spec.load import load_spec
from tzkgraph.spec.types import FLOW_PART, GraphSpec
from tzkgraph.core.runtime import pick_device
from tzkgraph.training.step import Phase, start_phase, train_step

CONFIGS = ("conditional", "stage2")
DEFAULT_SETS = ["data.limit=5000"]  # per source: a cache build of minutes on 2 CPU cores
TARGET_SPEEDUP, TARGET_MEMORY = 50.0, 5.0


def trainable_parts(spec: GraphSpec, config: str) -> frozenset[str]:
    """The atomic parts that train in ``config`` (see the module docstring)."""
    roots = {s.name for s in spec.stages if s.is_root}
    if config == "conditional":
        return frozenset(p for p in spec.atomic_parts() if p not in {f"{r}/{FLOW_PART}" for r in roots})
    return frozenset(p for p in spec.atomic_parts() if p.split("/")[0] not in roots)


@dataclass
class Trainer:
    """One mode's executor and its phase (objective, Adam, warm-up, gradient clip)."""

    phase: Phase
    n: int
    batch_size: int
    device: torch.device
    build_s: float

    @property
    def executor(self) -> GraphExecutor:
        return self.phase.executor

    def step(self, generator: torch.Generator) -> torch.Tensor:
        """One training step, the one ``tzkgraph run`` takes (``train_step``); returns the loss."""
        index = torch.randint(self.n, (self.batch_size,), device=self.device, generator=generator)
        return train_step(self.phase, index)[0]


def build_trainer(spec: GraphSpec, data: GraphData, config: str, mode: str, device: torch.device,
                  cache_dir: Path, batch_size: int, checkpoint: str | None, adam: str,
                  stack: bool = True, progress: bool = False) -> Trainer:
    """A mode's model (seeded: every mode and process starts from the same weights) and executor."""
    torch.manual_seed(spec.seed)
    model = TzKGraph(spec).to(device)
    if checkpoint:
        load_matching(model, load_checkpoint(checkpoint, map_location=device)["model"])
    trainable = trainable_parts(spec, config)
    params = model.set_trainable(trainable)  # frozen parts in eval mode, as train.py has them
    for stage in model.stages.values():
        stage.stacked = stack
    plan = plan_phase(spec, trainable)
    start = time.perf_counter()
    executor = GraphExecutor(model, data, plan, cache_dir, progress=progress, use_cache=mode != "recomputed")
    build_s = time.perf_counter() - start
    train = spec.train
    phase = start_phase(executor, params, lr=train.lr, warmup_steps=train.warmup, clip_grad=train.clip_grad,
                        amp=train.amp and device.type == "cuda" and torch.cuda.is_bf16_supported(),
                        adam={"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam])
    return Trainer(phase, len(data), batch_size, device, build_s)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- memory, in a fresh process per mode --------------------------------------------------------

def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _tensor_peak_mib(step) -> float:
    """Peak live CPU tensor bytes of one steady-state training step above its start, MiB.

    Two steps run under ``torch.profiler(profile_memory=True)``; the allocation events
    (``[memory]``, +bytes / −bytes) are summed in time order and the highest running sum
    during the second step, less the sum at its start, is the figure. (The second, so that
    the gradients it frees were allocated under the profiler and are counted.)
    """
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        with record_function("bench_cache.measured_step"):
            step()
    events = prof.profiler.kineto_results.events()
    marker = next(e for e in events if e.name() == "bench_cache.measured_step")
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events
                         if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live, base, peak = 0, None, 0
    for when, nbytes in allocations:
        if base is None and when >= marker.start_ns():
            base = peak = live
        live += nbytes
        if base is not None and when <= marker.end_ns():
            peak = max(peak, live)
    return (peak - (base or 0)) / 2**20


def probe_memory(job: dict) -> dict:
    """Peak memory of one mode's training steps, measured in this (fresh, spawned) process."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    spec = load_spec(job["graph"], job["sets"])
    data = load_graph_data(spec.data, "train", device=device)
    trainer = build_trainer(spec, data, job["config"], job["mode"], device, Path(job["cache_dir"]),
                            job["batch_size"], job["checkpoint"], job["adam"], job["stack"])
    if trainer.executor.caches_built:
        raise RuntimeError(f"the memory probe rebuilt {trainer.executor.caches_built}: "
                           "its weights differ from the timed run's")
    generator = torch.Generator(device=device).manual_seed(1)
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(job["steps"]):
            trainer.step(generator)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"tensor": (peak - before) / 2**20, "setup": before / 2**20, "total": peak / 2**20}
    before = _rss_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak RSS
        how = "VmHWM"
    except OSError:
        how = "ru_maxrss"  # an upper bound: it may hold a peak of the setup
    for _ in range(job["steps"]):
        trainer.step(generator)
    peak = _rss_mib("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss": peak - before, "setup": before, "total": peak, "how": how,
            "tensor": _tensor_peak_mib(lambda: trainer.step(generator))}


def measure_memory(job: dict) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(probe_memory, (job,))


# --- time ---------------------------------------------------------------------------------------

def time_blocks(trainers: dict[str, Trainer], blocks: dict[str, int], reps: int,
                device: torch.device) -> dict[str, list[float]]:
    """Steps/s of every block, per mode; the modes alternate, ABBA, on the same indices."""
    rates: dict[str, list[float]] = {m: [] for m in trainers}
    for rep in range(reps):
        order = list(trainers) if rep % 2 == 0 else list(reversed(trainers))
        for mode in order:
            generator = torch.Generator(device=device).manual_seed(1000 + rep)  # same batches per mode
            _sync(device)
            start = time.perf_counter()
            for _ in range(blocks[mode]):
                trainers[mode].step(generator)
            _sync(device)
            rates[mode].append(blocks[mode] / (time.perf_counter() - start))
    return rates


def breakdown(trainer: Trainer, device: torch.device, steps: int) -> dict[str, float]:
    """Mean ms of each part of a step (synchronised between parts)."""
    parts = {"indices": 0.0, "forward": 0.0, "backward": 0.0, "clip + adam": 0.0}
    generator = torch.Generator(device=device).manual_seed(7)
    for _ in range(steps):
        t0 = time.perf_counter()
        index = torch.randint(trainer.n, (trainer.batch_size,), device=device, generator=generator)
        _sync(device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.phase.amp):
            loss, _ = trainer.executor.loss(index)
        _sync(device)
        t2 = time.perf_counter()
        trainer.phase.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        t3 = time.perf_counter()
        trainer.phase.clip()
        trainer.phase.optimizer.step()
        trainer.phase.scheduler.step()
        _sync(device)
        t4 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key] += dt * 1e3 / steps
    return parts


def frozen_flow_ms(trainer: Trainer, device: torch.device, reps: int = 3) -> float:
    """Median ms of the root stages' frozen t-flows, forward, no grad, on one batch."""
    ex = trainer.executor
    roots = [s.name for s in ex.spec.stages if s.is_root]
    index = torch.arange(trainer.batch_size, device=device) % trainer.n
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.phase.amp):
        for _ in range(reps + 1):
            _sync(device)
            start = time.perf_counter()
            for name in roots:
                ex.model.stages[name].t_flow(ex.data.observations(index, fixed=True))
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def profile_step(trainer: Trainer, device: torch.device, steps: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    generator = torch.Generator(device=device).manual_seed(7)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step(generator)
        _sync(device)
    averages = prof.key_averages()
    ops = sum(e.count for e in averages if e.key.startswith("aten::"))
    return f"{ops / steps:.0f} aten ops per step\n" + averages.table(sort_by="self_cpu_time_total",
                                                                       row_limit=rows)


def bench_config(config: str, spec: GraphSpec, data: GraphData, args, device: torch.device) -> dict:
    say = lambda text: print(f"[{config}] {text}", flush=True)
    trainable = trainable_parts(spec, config)
    plan = plan_phase(spec, trainable)
    say(f"trains {len(trainable)} parts: {', '.join(sorted(trainable))}")
    say(f"cached: t-flow of {sorted(plan.cached_flow) or '-'}, code posteriors of "
        f"{sorted(plan.cached_codes) or '-'}")
    modes = ["cached", "recomputed"]
    trainers = {m: build_trainer(spec, data, config, m, device, args.cache_dir, args.batch_size,
                                 args.checkpoint, args.adam, args.stack, progress=args.progress) for m in modes}
    built, build_s = trainers["cached"].executor.caches_built, trainers["cached"].build_s
    say(f"cache: {'built ' + ', '.join(built) if built else 'loaded'} in {build_s:.1f} s "
        f"({len(data) / build_s:.0f} examples/s)")

    # Same weights, same batches, same random draws: every mode must give the same losses. The
    # first step runs the ActNorms' data-dependent initialisation (one knowledge type at a time),
    # the second the stacked evaluation. In float32 (no autocast); CUDA's TF32 convolutions,
    # batched otherwise than the cache's, get more slack.
    for step in (1, 2):
        losses = {}
        for mode, trainer in trainers.items():
            torch.manual_seed(spec.seed)
            amp, trainer.phase.amp = trainer.phase.amp, False
            losses[mode] = float(trainer.step(torch.Generator(device=device).manual_seed(step)))
            trainer.phase.amp = amp
        gap = max(abs(v - losses["cached"]) for v in losses.values())
        say(f"step {step} loss: " + ", ".join(f"{m} {v:.6g}" for m, v in losses.items()) + f" (|Δ| {gap:.2g})")
        tolerance = (1e-3 if device.type == "cuda" else 1e-4) * max(1.0, abs(losses["cached"]))
        if gap > tolerance:
            raise SystemExit(f"bench_cache: [{config}] the modes' losses differ: they do not compute "
                             "the same thing")

    rough = {}  # the last warm-up step of each, to size the blocks to ~args.block_s
    for mode, trainer in trainers.items():
        generator = torch.Generator(device=device).manual_seed(99)
        for _ in range(args.warmup):
            _sync(device)
            start = time.perf_counter()
            trainer.step(generator)
            _sync(device)
            rough[mode] = time.perf_counter() - start
    blocks = {m: args.steps or max(2, min(500, round(args.block_s / rough[m]))) for m in modes}
    say(f"timing: {args.reps} repetitions of " + " / ".join(f"{blocks[m]} {m}" for m in modes) + " steps")
    result = {"config": config, "modes": modes, "build_s": build_s, "built": built, "n": len(data),
              "rates": time_blocks(trainers, blocks, args.reps, device)}
    result["breakdown"] = {m: breakdown(t, device, args.breakdown_steps) for m, t in trainers.items()}
    result["flow_ms"] = frozen_flow_ms(trainers["cached"], device)
    if args.profile:
        result["profile"] = profile_step(trainers["cached"], device, 3, args.profile_rows)
    del trainers
    gc.collect()
    if args.memory:
        result["memory"] = {}
        for mode in modes:
            say(f"memory probe: {mode} (fresh process)")
            result["memory"][mode] = measure_memory({
                "graph": args.graph, "sets": args.sets, "config": config, "mode": mode,
                "device": str(device), "cache_dir": str(args.cache_dir), "batch_size": args.batch_size,
                "checkpoint": args.checkpoint, "adam": args.adam, "stack": args.stack,
                "steps": args.mem_steps, "threads": torch.get_num_threads()})
    return result


# --- report -------------------------------------------------------------------------------------

def report(results: list[dict], args, device: torch.device) -> None:
    cpu = device.type == "cpu"
    print()
    print(f"bench_cache: {args.graph} " + " ".join("--set " + s for s in args.sets))
    print(f"device {device} ({torch.get_num_threads()} threads), batch {args.batch_size}, Adam {args.adam}, "
          f"knowledge types {'stacked' if args.stack else 'one at a time (--no-stack)'}, "
          f"torch {torch.__version__}; medians over {args.reps} interleaved blocks per mode")
    if cpu:
        load = os.getloadavg()[0]
        busy = max(load, args.load_before) > 1.5 * torch.get_num_threads()
        print(f"1-min load average {args.load_before:.1f} at the start, {load:.1f} at the end, "
              f"{os.cpu_count()} cores" + ("  ** other processes compete for the CPU: absolute "
                                         "figures are noisy (--threads 1 suffers least) **" if busy else ""))
    for r in results:
        modes, rates, mem = r["modes"], r["rates"], r.get("memory")
        med = {m: statistics.median(rates[m]) for m in modes}
        print()
        print(f"== {r['config']}: {r['n']} examples; cache build {r['build_s']:.1f} s "
              f"({'built ' + ', '.join(r['built']) if r['built'] else 'loaded, not built'}; "
              f"{r['n'] / r['build_s']:.0f} examples/s)")
        head = f"{'mode':<11} {'steps/s':>8} {'(min-max)':>15} {'ms/step':>8} {'speed':>7}"
        if mem:
            head += f" {'step tensor MiB':>16}" + (f" {'step RSS MiB':>13}" if cpu else "")
            head += f" {'setup MiB':>10} {'total MiB':>10}"
        print(head)
        for m in modes:
            line = (f"{m:<11} {med[m]:8.2f} {f'({min(rates[m]):.2f}-{max(rates[m]):.2f})':>15} "
                    f"{1e3 / med[m]:8.1f} {med[m] / med['recomputed']:6.2f}x")
            if mem:
                line += f" {mem[m]['tensor']:16.1f}" + (f" {mem[m]['rss']:13.1f}" if cpu else "")
                line += f" {mem[m]['setup']:10.0f} {mem[m]['total']:10.0f}"
            print(line)
        if mem:
            for m in modes:
                if m == "recomputed":
                    continue
                ratio = lambda key: mem["recomputed"][key] / max(mem[m][key], 1e-9)
                print(f"memory, recomputed ÷ {m}: step tensor {ratio('tensor'):.2f}x"
                      + (f", step RSS {ratio('rss'):.2f}x" if cpu else "") + f", total {ratio('total'):.2f}x")
        print("ms/step by part (synchronised):")
        for m in modes:
            print(f"  {m:<11} " + ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown"][m].items()))
        flow = r["flow_ms"]
        print(f"reference: the frozen root t-flow's forward alone (no grad, one batch) takes {flow:.1f} ms, "
              f"{flow * med['cached'] / 1e3:.2f} cached steps")
        if r["config"] == "stage2":
            for m in [m for m in modes if m != "recomputed"]:
                speedup = med[m] / med["recomputed"]
                line = (f"target ({m}): steps/s >= {TARGET_SPEEDUP:.0f}x recomputed: "
                        f"{'met' if speedup >= TARGET_SPEEDUP else 'MISSED'} ({speedup:.2f}x)")
                if mem:
                    lean = mem["recomputed"]["tensor"] / max(mem[m]["tensor"], 1e-9)
                    line += (f"; step memory >= {TARGET_MEMORY:.0f}x lower: "
                             f"{'met' if lean >= TARGET_MEMORY else 'MISSED'} ({lean:.2f}x step tensor"
                             + (f", {mem['recomputed']['rss'] / max(mem[m]['rss'], 1e-9):.2f}x step RSS)"
                                if cpu else ")"))
                print(line)
        if "profile" in r:
            print(f"-- profile of a cached step: {r['profile']}")
    if any("memory" in r for r in results):
        print()
        if cpu:
            print("memory, per mode in a fresh process after loading data, model and cache: step tensor = "
                  "peak live CPU tensor bytes of one steady-state step above its start (torch.profiler "
                  f"profile_memory); step RSS = peak RSS over the first {args.mem_steps} steps minus the RSS "
                  "after setup (with Adam's moments and allocator slack); setup / total = RSS after "
                  "setup / at the peak (the cache is resident in the cached modes).")
        else:
            print("memory, per mode in a fresh process: step tensor = torch.cuda.max_memory_allocated over "
                  f"{args.mem_steps} steps minus memory_allocated after setup (data, model, cache on the "
                  "device); setup / total = allocated after setup / at the peak.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graph", nargs="?", default="graphs/mnist_digits.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a YAML value, after the defaults {DEFAULT_SETS} "
                        "(--set data.limit=null: the full data)")
    p.add_argument("--config", choices=CONFIGS + ("both",), default="both")
    p.add_argument("--batch-size", type=int, help="default: the graph's train.batch_size")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--cache-dir", type=Path, help="default: a fresh temporary folder (the build is timed)")
    p.add_argument("--checkpoint", help="start from these weights (a tzkgraph checkpoint.pt)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode first (default 3)")
    p.add_argument("--block-s", type=float, default=4.0, help="seconds per block, about (default 4)")
    p.add_argument("--steps", type=int, help="steps per block, instead of --block-s")
    p.add_argument("--breakdown-steps", type=int, default=5, help="steps timed by part (default 5)")
    p.add_argument("--mem-steps", type=int, default=4, help="steps per memory probe (default 4)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probes")
    p.add_argument("--adam", choices=("default", "foreach", "fused"), default="fused",
                   help="Adam's implementation (default: fused, as train.py)")
    p.add_argument("--no-stack", dest="stack", action="store_false",
                   help="evaluate a stage's knowledge types one at a time (TzKStage(stacked=False))")
    p.add_argument("--profile", action="store_true", help="torch.profiler's top ops of a cached step")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    args = p.parse_args(argv)
    args.sets = DEFAULT_SETS + args.sets
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.load_before = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.graph, args.sets)
    device = pick_device(args.device)
    args.batch_size = args.batch_size or spec.train.batch_size
    temporary = None
    if args.cache_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_cache.")
        args.cache_dir = Path(temporary.name)
    start = time.perf_counter()
    data = load_graph_data(spec.data, "train", device=device)
    print(f"data: {len(data)} examples in {time.perf_counter() - start:.1f} s; caches in {args.cache_dir}",
          flush=True)
    configs = CONFIGS if args.config == "both" else (args.config,)
    try:
        results = [bench_config(c, spec, data, args, device) for c in configs]
        report(results, args, device)
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
