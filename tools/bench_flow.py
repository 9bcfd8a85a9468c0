"""Benchmark tzkgraph's Glow against normflows' Glow at the same architecture.

normflows' multi-scale Glow is built as in its example (``examples/glow_colab.ipynb``:
``GlowBlock``s, ``Squeeze``, ``Merge``, one ``DiagGaussian`` base per level, put together
by ``MultiscaleFlow``); tzkgraph's is ``tzkgraph.model.flows.Glow`` with the same levels, steps
per level, coupling-net width, affine coupling (scale ``sigmoid(s + 2)``), LU-parameterised
1×1 convolutions and split structure: per level a 2×2 squeeze, ``steps`` × (ActNorm → 1×1
conv → coupling), then half the channels factored out. Parameter counts of the flows are
equal. ``tzkgraph-lu-relu`` also has normflows' coupling-net activation (``ConvNet2d``'s
``LeakyReLU(0)``, i.e. ReLU): the identical architecture. ``tzkgraph-lu`` and
``tzkgraph-shuffle`` (a fixed channel permutation instead of the 1×1 convolutions) have
tzkgraph's default, the paper's swish, which costs an ``exp`` per hidden activation forward
and backward (about a quarter of a CPU training step). What cannot be matched:

- base density: normflows learns a diagonal Gaussian per level (``2·D`` more parameters);
  tzkgraph's default (``prior="learned"``) has Glow's split priors as well (a Gaussian per
  factored-out part given the kept half, by a 3×3 convolution, plus a learned per-dimension
  mean and scale); ``--prior fixed`` gives the ``N(0, I)`` of the TzK paper. Neither has
  ActNorm inside the nets;
- normflows' 1×1 convolution inverts ``L`` and ``U`` in float64 on every sampling call,
  tzkgraph inverts ``W`` in float32; which half is factored out, the shift's sign and the
  channel order of the nets' (shift, scale) output differ, at no cost either way.

Measured, interleaved in one run (the implementations alternate within every repetition,
the order reversed every other one), as medians over the repetitions (with the best):

- training throughput: forward (data → latent) + NLL + backward + Adam step, images/s;
- sampling throughput: ``z ~ N(0, I)`` → inverse (data space), no grad, images/s;
- peak memory of a training step and of a sampling batch, each measured in a fresh
  subprocess (CPU: growth of peak RSS, see :func:`_probe_memory`; CUDA:
  ``torch.cuda.max_memory_allocated`` above what the model and its input already held).

On a shared machine the load of other processes moves wall-clock figures a lot: the load
average is printed; compare ratios from one run, and prefer the paired per-repetition ones.
normflows is needed for the benchmark only (``pip install normflows``); it is not a
dependency of tzkgraph.

Usage::

    python tools/bench_flow.py                      # levels 3, steps 8, hidden 128, batch 64
    python tools/bench_flow.py --steps 4 --reps 3   # quicker
    python tools/bench_flow.py --impl tzkgraph-lu tzkgraph-lu-nchw normflows  # before/after
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
import warnings
from typing import Callable

import torch

from tzkgraph.model.density import gaussian_log_prob
from tzkgraph.model.flows import Glow
from tzkgraph.model.flows.coupling import ConvNet

# tzkgraph-lu-relu is normflows' architecture exactly (LU 1x1 convs, ReLU coupling nets);
# tzkgraph-lu and tzkgraph-shuffle have tzkgraph's default swish nets.
IMPLEMENTATIONS = ("tzkgraph-lu-relu", "tzkgraph-lu", "tzkgraph-shuffle", "normflows")
# Not run by default: the shuffle with ReLU nets, and tzkgraph with its coupling nets computed
# as plain NCHW convolutions (not channels-last, see tzkgraph.model.flows.coupling.ConvNet), for
# before/after comparisons.
EXTRA = ("tzkgraph-shuffle-relu", "tzkgraph-lu-nchw")
IN_SHAPE = (1, 32, 32)
PRIOR = "learned"  # tzkgraph's Glow prior (--prior)


def _import_normflows():
    warnings.filterwarnings("ignore", message="torch.lu is deprecated")  # inside normflows
    try:
        import normflows
    except ImportError:
        sys.exit("bench_flow: normflows is not installed; it is needed for this benchmark only:\n"
                 "    pip install normflows")
    return normflows


def build_normflows(levels: int, steps: int, hidden: int):
    """normflows' multiscale Glow, built as in its Glow example, for ``IN_SHAPE`` images.

    Level ``i = 0`` is the coarsest. In its sampling direction a level runs its
    ``GlowBlock``s and then un-squeezes; a ``Merge`` concatenates the next level's
    base sample. Block ``i`` works on ``C · 2**(L + 1 - i)`` channels — for one input
    channel and ``L = 3``: 16, 8, 4, the same as tzkgraph's levels.
    """
    nf = _import_normflows()
    c, h, w = IN_SHAPE
    q0, merges, flows = [], [], []
    for i in range(levels):
        blocks = [nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                  for _ in range(steps)]
        flows.append(blocks + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def build(name: str, levels: int, steps: int, hidden: int) -> torch.nn.Module:
    """One of ``IMPLEMENTATIONS + EXTRA``."""
    if name == "normflows":
        return build_normflows(levels, steps, hidden)
    activation = "relu" if name.endswith("-relu") else "swish"
    model = Glow(IN_SHAPE, levels, steps, hidden, permutation=name.split("-")[1], activation=activation,
                 prior=PRIOR)
    if name.endswith("-nchw"):
        for module in model.modules():
            if isinstance(module, ConvNet):  # this instance only: the plain Sequential forward
                module.forward = types.MethodType(torch.nn.Sequential.forward, module)
    return model


def workloads(name: str, model: torch.nn.Module, batch: int, device: torch.device
              ) -> tuple[Callable[[], None], Callable[[], torch.Tensor]]:
    """``(train_step, sample)`` closures for one implementation; same data for all."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, *IN_SHAPE, generator=g) - 0.5).to(device)  # dequantised pixels
    dim = x[0].numel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    if name == "normflows":
        def nll() -> torch.Tensor:
            return model.forward_kld(x)

        def draw() -> torch.Tensor:
            return model.sample(batch)[0]  # base sample → GlowBlocks (its sampling direction)
    else:
        def nll() -> torch.Tensor:
            z, logdet = model(x)
            return -(gaussian_log_prob(z) + logdet).mean()

        def draw() -> torch.Tensor:
            return model.inverse(torch.randn(batch, dim, device=device))

    def train_step() -> None:
        model.train()
        loss = nll()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def sample() -> torch.Tensor:
        model.eval()
        return draw()

    return train_step, sample


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return time.perf_counter() - start


def measure_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, list[float]]]:
    """Images/s per implementation and workload, one entry per repetition."""
    jobs = {}
    for name in args.impl:
        torch.manual_seed(0)
        model = build(name, args.levels, args.steps, args.hidden).to(device)
        jobs[name] = workloads(name, model, args.batch, device)
    for name, (train_step, sample) in jobs.items():  # ActNorm init, Adam state, kernel caches
        for _ in range(args.warmup):
            train_step()
            if not torch.isfinite(sample()).all():  # checked here only: no host sync when timed
                raise RuntimeError(f"{name}: non-finite sample")
    rates = {name: {"train": [], "sample": []} for name in jobs}
    for rep in range(args.reps):
        order = list(jobs) if rep % 2 == 0 else list(reversed(jobs))
        for kind, index, iters in (("train", 0, args.iters), ("sample", 1, args.sample_iters)):
            for name in order:
                seconds = _timed(jobs[name][index], iters, device)
                rates[name][kind].append(iters * args.batch / seconds)
        print(f"  rep {rep + 1}/{args.reps}: " + "  ".join(
            f"{n} {rates[n]['train'][-1]:.1f}/{rates[n]['sample'][-1]:.1f}" for n in jobs),
            flush=True)
    return rates


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _probe_memory(args: argparse.Namespace, device: torch.device) -> dict:
    """Peak memory of ``args.probe``'s workload, in MiB, measured in this (fresh) process.

    CPU: the model, its input and the optimizer are built first; then the peak-RSS
    counter is reset (``/proc/self/clear_refs``) and ``--mem-steps`` runs of the
    workload follow. The figure is peak RSS minus the RSS before them: activations kept
    for backward, gradients, Adam's moments (allocated on the first step), temporaries
    and allocator slack. Where the counter cannot be reset, ``ru_maxrss`` is used (an
    upper bound only if nothing before peaked higher).
    CUDA: ``max_memory_allocated`` minus the memory allocated before the runs.
    """
    name, kind = args.probe
    torch.manual_seed(0)
    model = build(name, args.levels, args.steps, args.hidden).to(device)
    train_step, sample = workloads(name, model, args.batch, device)
    if kind == "sample":  # no training pass first: its freed memory would hide the sampling peak
        for module in model.modules():
            if hasattr(module, "data_dep_init_done"):  # normflows' ActNorm: skip its init
                module.data_dep_init_done = torch.tensor(1.0)
    fn = train_step if kind == "train" else sample
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(args.mem_steps):
            fn()
        _sync(device)
        return {"peak_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20,
                "how": "cuda max_memory_allocated"}
    before = _rss_kib("VmRSS")
    if before is None:  # no /proc (not Linux)
        return {"peak_mib": float("nan"), "how": "unavailable without /proc"}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter VmHWM
        how = "VmHWM"
    except OSError:
        how = "ru_maxrss"
    for _ in range(args.mem_steps):
        fn()
    peak = _rss_kib("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak - before) / 1024, "how": how}


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Runs :func:`_probe_memory` in a fresh subprocess per implementation and workload."""
    out: dict[str, dict[str, float]] = {name: {} for name in args.impl}
    common = ["--levels", str(args.levels), "--steps", str(args.steps), "--hidden", str(args.hidden),
              "--batch", str(args.batch), "--device", args.device, "--mem-steps", str(args.mem_steps),
              "--prior", args.prior]
    if args.threads:
        common += ["--threads", str(args.threads)]
    for kind in ("train", "sample"):
        for name in args.impl:
            proc = subprocess.run([sys.executable, __file__, "--probe", name, kind, *common],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"memory probe {name}/{kind} failed:\n{proc.stderr}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            out[name][kind] = result["peak_mib"]
            out[name]["how"] = result["how"]
    return out


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} [{max(values):.2f}]"


def _ratio(rates: dict, name: str, kind: str) -> str:
    mine, base = rates[name][kind], rates["normflows"][kind]
    # per repetition the two ran back to back, so paired ratios cancel slow drifts in load
    paired = [a / b for a, b in zip(mine, base)]
    return (f"{kind} {statistics.median(mine) / statistics.median(base):.2f}x "
            f"(paired per rep {statistics.median(paired):.2f}x, best vs best {max(mine) / max(base):.2f}x)")


def report(args: argparse.Namespace, rates: dict, memory: dict | None) -> None:
    header = f"{'implementation':<18} {'train img/s':>20} {'sample img/s':>20}"
    if memory:
        header += f" {'train peak MiB':>15} {'sample peak MiB':>16}"
    print()
    print(header + "\n" + " " * 19 + f"{'median [best]':>20} {'median [best]':>20}")
    print("-" * len(header))
    for name in args.impl:
        row = f"{name:<18} {_cell(rates[name]['train']):>20} {_cell(rates[name]['sample']):>20}"
        if memory:
            row += f" {memory[name]['train']:15.1f} {memory[name]['sample']:16.1f}"
        print(row)
    if "normflows" in rates:
        print()
        for name in args.impl:
            if name == "normflows":
                continue
            line = f"{name} / normflows: {_ratio(rates, name, 'train')}; {_ratio(rates, name, 'sample')}"
            if memory:
                line += (f"; peak memory train {memory[name]['train'] / memory['normflows']['train']:.2f}x,"
                         f" sample {memory[name]['sample'] / memory['normflows']['sample']:.2f}x")
            print(line)
    if memory:
        how = memory[args.impl[0]]["how"]
        what = ("growth of peak RSS over the RSS of a fresh process holding the model, input "
                "and optimizer" if how != "cuda max_memory_allocated"
                else "CUDA max_memory_allocated above what the model and input held")
        print(f"peak memory: {what}, over {args.mem_steps} run(s) [{how}]")


def _parameter_counts(args: argparse.Namespace) -> str:
    out = []
    for name in args.impl:
        model = build(name, args.levels, args.steps, args.hidden)
        out.append(f"{name} {sum(p.numel() for p in model.parameters()):,}")
    return ", ".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=int, default=3, help="scales (default 3)")
    p.add_argument("--steps", type=int, default=8, help="flow steps per level (default 8)")
    p.add_argument("--hidden", type=int, default=128, help="coupling-net channels (default 128)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions (default 10)")
    p.add_argument("--iters", type=int, default=2, help="training steps per repetition (default 2)")
    p.add_argument("--sample-iters", type=int, default=4, help="sampling batches per repetition (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps and samples (default 2)")
    p.add_argument("--mem-steps", type=int, default=2, help="runs per memory probe (default 2)")
    p.add_argument("--impl", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS + EXTRA,
                   help=f"implementations to compare (default: {' '.join(IMPLEMENTATIONS)})")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--prior", default="learned", choices=("learned", "fixed"),
                   help="tzkgraph's Glow prior (default learned; fixed: N(0, I), before)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probes")
    p.add_argument("--probe", nargs=2, metavar=("IMPL", "KIND"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    global PRIOR
    PRIOR = args.prior
    if "normflows" in args.impl or (args.probe and args.probe[0] == "normflows"):
        _import_normflows()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.probe:
        print(json.dumps(_probe_memory(args, device)))
        return 0
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"float32, batch {args.batch}, input {IN_SHAPE}, levels {args.levels}, "
          f"steps {args.steps}, hidden {args.hidden}")
    print(f"parameters: {_parameter_counts(args)}")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} (on {os.cpu_count()} CPUs)")
    rates = measure_throughput(args, device)
    memory = measure_memory(args) if args.memory else None
    report(args, rates, memory)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
