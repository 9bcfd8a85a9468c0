"""Training throughput of a graph, phase by phase: ms/step, images/s and achieved TFLOP/s.

Runs ``tzkgraph.training.train.run`` itself (the same steps, caches, autocast and ``torch.compile``
as ``tzkgraph run``) with every phase cut to ``--steps`` steps, once per variant, and reads
the speed from the run's own metric lines (``ms_per_step``, ``images_per_s``: timed between
log lines, checkpoints and sample pictures excluded). The first log interval of each phase
(warm-up: cuDNN autotuning, ``torch.compile``, ActNorm initialisation) is left out; the
figure is the median of the other intervals.

Achieved TFLOP/s = (FLOPs of one training step) / (seconds per step). The FLOPs are counted
once per phase, on a step whose codes come from the encoder, with
``torch.utils.flop_counter.FlopCounterMode`` on the trained model:
matrix products and convolutions of the forward and backward pass (elementwise work is
not counted, as usual for model FLOP utilisation). Frozen parts read from a cache cost no
FLOPs, and are counted as such.

Variants: ``fp32`` (``train.amp=false``), ``bf16`` (autocast to bfloat16 on CUDA, when the
GPU has it; on a CPU it is the same as fp32), either with ``+compile``
(``train.compile=true``) or ``+cudagraphs`` (``train.compile=reduce-overhead``:
compiled, and replayed as CUDA graphs).

Usage::

    python tools/bench_train.py                                   # graphs/mnist_digits.yaml
    python tools/bench_train.py --variants fp32 bf16 bf16+compile --steps 400
    python tools/bench_train.py --set stages.images.flow.steps=10 --set stages.images.flow.hidden=512
    python tools/bench_train.py graphs/tiny.yaml --steps 60 --log-every 10   # a quick CPU check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.data.dataset import load_graph_data
from tzkgraph.graph.executor import GraphExecutor
from tzkgraph.graph.plan import plan_phase
from tzkgraph.graph.model import TzKGraph
from tzkgraph.spec.load import load_spec
from tzkgraph.spec.types import GraphSpec
from tzkgraph.core.runtime import pick_device
from tzkgraph.training.train import run

VARIANTS = {"fp32": ["train.amp=false", "train.compile=false"],
            "bf16": ["train.amp=true", "train.compile=false"],
            "fp32+compile": ["train.amp=false", "train.compile=true"],
            "bf16+compile": ["train.amp=true", "train.compile=true"],
            "fp32+cudagraphs": ["train.amp=false", "train.compile=reduce-overhead"],
            "bf16+cudagraphs": ["train.amp=true", "train.compile=reduce-overhead"]}


def step_flops(spec: GraphSpec, run_dir: Path, device: torch.device, amp: bool) -> list[float]:
    """FLOPs of one training step (forward + backward) of each phase, on the trained weights."""
    model = TzKGraph(spec).to(device)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt", map_location=device)["model"])
    data = load_graph_data(spec.data, "train", device=device)
    index = torch.randint(len(data), (spec.train.batch_size,), device=device)
    flops = []
    for phase in spec.train.phases:
        trainable = spec.trainable(phase)
        model.set_trainable(trainable)
        executor = GraphExecutor(model, data, plan_phase(spec, trainable), spec.train.cache_dir,
                                 progress=False)
        # codes from the encoder: a decoder-mode step also runs a no-grad code inverse (a
        # metric, a few MFLOP), which FlopCounterMode's module hooks refuse on torch 2.14
        modes = {name: "encoder" for name in executor.plan.loss_stages}
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = executor.loss(index, 0, modes)
            loss.backward()
        model.zero_grad(set_to_none=True)
        flops.append(float(counter.get_total_flops()))
    return flops


def bench_variant(args, variant: str, out: Path) -> list[dict]:
    """One variant's run; a row per phase."""
    sets = [*args.set, *VARIANTS[variant], f"train.out_dir={out / 'runs'}",
            f"train.cache_dir={out / 'cache'}", f"train.log_every={args.log_every}",
            "train.checkpoint_every=0", "train.sample_every=0", f"train.device={args.device}"]
    if args.batch_size:
        sets.append(f"train.batch_size={args.batch_size}")
    spec = load_spec(args.graph, sets)
    sets += [f"train.phases.{i}.steps={args.steps}" for i in range(len(spec.train.phases))]
    spec = load_spec(args.graph, sets)
    if args.phase:  # a subset of the phases, in the graph's order
        unknown = set(args.phase) - {p.name for p in spec.train.phases}
        if unknown:
            raise SystemExit(f"bench_train: no phase {sorted(unknown)[0]!r} in {args.graph}")
        phases = tuple(p for p in spec.train.phases if p.name in args.phase)
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, phases=phases))
    device = pick_device(spec.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = run(spec, fresh=True, progress=False, say=lambda text: print(f"  [{variant}] {text}", flush=True))
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    amp = spec.train.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    flops = step_flops(spec, result.run_dir, device, amp)
    rows = []
    for phase, phase_flops in zip(spec.train.phases, flops):
        lines = [line for line in result.history if line["phase"] == phase.name]
        timed = lines[1:] or lines  # the first interval is warm-up
        ms = statistics.median(line["ms_per_step"] for line in timed)
        rows.append({"variant": variant, "phase": phase.name, "device": str(device),
                     "batch": spec.train.batch_size, "ms_per_step": ms,
                     "images_per_s": spec.train.batch_size / ms * 1e3,
                     "gflop_per_step": phase_flops / 1e9, "tflops": phase_flops / ms / 1e9,
                     "warmup_ms_per_step": lines[0]["ms_per_step"], "peak_mib": peak,
                     "run_wall_s": wall})
    return rows


def report(rows: list[dict]) -> None:
    print(f"\n{'variant':<14} {'phase':<12} {'batch':>5} {'ms/step':>9} {'images/s':>10} "
          f"{'GFLOP/step':>11} {'TFLOP/s':>8} {'1st ms/step':>12} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['variant']:<14} {r['phase']:<12} {r['batch']:>5} {r['ms_per_step']:>9.2f} "
              f"{r['images_per_s']:>10.0f} {r['gflop_per_step']:>11.2f} {r['tflops']:>8.3f} "
              f"{r['warmup_ms_per_step']:>12.1f} {r['peak_mib']:>9.0f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graph", nargs="?", default="graphs/mnist_digits.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="YAML override")
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=300, help="steps per phase (default 300)")
    p.add_argument("--log-every", type=int, default=50, help="steps per timed interval (default 50)")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--phase", action="append", help="time only this phase (repeatable; default all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 2 * args.log_every:
        raise SystemExit("bench_train: --steps must cover at least two --log-every intervals")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        for variant in args.variants:
            rows += bench_variant(args, variant, Path(tmp) / variant.replace("+", "_"))
            if len(args.variants) > 1:
                report([r for r in rows if r["variant"] == variant])
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
