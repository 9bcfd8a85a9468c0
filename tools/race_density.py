"""A density race: tzkgraph's Glow against normflows' at identical architecture, and ablations.

Every contestant trains on the same MNIST 32×32 batches (8-bit, uniform dequantisation, the
same noise), with Adam at the same learning rate and linear warm-up, each in its own process
(no contestant warms another's caches or shares its cores), one after the other. Reported:
test bits/dim (2000 test images, fixed dequantisation, the papers' convention
``NLL/(D ln 2) + 8`` at 32×32×1) after ``--steps`` steps and, with ``--wall S``, at the last
evaluation before ``S`` seconds of training (equal wall-clock; evaluation time excluded).

Contestants: ``normflows`` (its Glow example's multiscale Glow: ``GlowBlock``s with LU 1×1
convolutions and ReLU coupling nets, a learned diagonal Gaussian per level, built by
``tools/bench_flow.py``) and ``tzkgraph-PERM-ACT-PRIOR`` for any ``PERM`` in ``lu shuffle``,
``ACT`` in ``relu swish`` and ``PRIOR`` in ``learned fixed`` (``tzkgraph.model.flows.Glow``;
``tzkgraph-lu-relu-fixed`` is normflows' architecture with tzkgraph's N(0, I) base, the row the
issue started from). normflows is needed for this benchmark only (``pip install normflows``).

Usage::

    python tools/race_density.py                                  # the default field, seed 0
    python tools/race_density.py --seeds 0 1 --impl normflows tzkgraph-lu-relu-learned
    python tools/race_density.py --steps 600 --wall 120 --json race.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_flow's normflows builder

DEFAULT_FIELD = ("normflows", "tzkgraph-lu-relu-fixed", "tzkgraph-lu-relu-learned",
                 "tzkgraph-shuffle-swish-fixed", "tzkgraph-shuffle-swish-learned")
IN_SHAPE = (1, 32, 32)


def build(name: str, levels: int, steps: int, hidden: int) -> torch.nn.Module:
    """A contestant by name (see the module docstring)."""
    if name == "normflows":
        from bench_flow import build_normflows
        return build_normflows(levels, steps, hidden)
    from tzkgraph.model.flows import Glow
    parts = name.split("-")
    if len(parts) != 4 or parts[0] != "tzkgraph":
        raise SystemExit(f"race_density: unknown contestant {name!r} (normflows or tzkgraph-PERM-ACT-PRIOR)")
    return Glow(IN_SHAPE, levels, steps, hidden, permutation=parts[1], activation=parts[2], prior=parts[3])


def nll_fn(name: str, model: torch.nn.Module):
    """``x ↦ −log p(x)`` per image, nats."""
    if name == "normflows":
        return lambda x: -model.log_prob(x, None)
    from tzkgraph.model.density import gaussian_log_prob

    def nll(x):
        z, logdet = model(x)
        return -(gaussian_log_prob(z) + logdet)
    return nll


def mnist_32(split: str) -> torch.Tensor:
    """MNIST ``split`` as uint8 ``(N, 1, 32, 32)``."""
    from tzkgraph.data.sources import load_images, pad_to
    images, _ = load_images("mnist", split)
    return pad_to(images, 32)


def dequantised(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    from tzkgraph.data.sources import dequantise
    return dequantise(images.long(), 8, generator)


@torch.no_grad()
def test_bpd(nll, model: torch.nn.Module, test: torch.Tensor) -> float:
    model.eval()
    total = sum(nll(test[i:i + 500]).double().sum().item() for i in range(0, len(test), 500))
    model.train()
    return total / len(test) / (math.prod(IN_SHAPE) * math.log(2)) + 8


def worker(args: argparse.Namespace) -> dict:
    """One contestant, one seed: the race's figures as a dict."""
    torch.set_num_threads(args.threads)
    train, test_images = mnist_32("train"), mnist_32("test")[: args.test]
    test = dequantised(test_images, torch.Generator().manual_seed(1234))
    torch.manual_seed(args.seed)
    model = build(args.worker, args.levels, args.flow_steps, args.hidden)
    nll = nll_fn(args.worker, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
    data = torch.Generator().manual_seed(args.seed)  # same batches and noise for every contestant
    curve, trained_s, at_wall = [], 0.0, None
    for step in range(1, args.steps + 1):
        x = dequantised(train[torch.randint(len(train), (args.batch,), generator=data)], data)
        start = time.perf_counter()
        loss = nll(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        trained_s += time.perf_counter() - start
        if not math.isfinite(loss.item()):
            return {"impl": args.worker, "seed": args.seed, "diverged_at": step}
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, round(trained_s, 1), test_bpd(nll, model, test)))
            if args.wall and trained_s <= args.wall:
                at_wall = curve[-1]
            print(f"  {args.worker} seed {args.seed} step {step}: {curve[-1][2]:.3f} bits/dim, "
                  f"{trained_s:.0f} s", file=sys.stderr, flush=True)
    return {"impl": args.worker, "seed": args.seed, "params": sum(p.numel() for p in model.parameters()),
            "bpd": curve[-1][2], "train_s": round(trained_s, 1), "curve": curve, "at_wall": at_wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", default=list(DEFAULT_FIELD))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--flow-steps", type=int, default=6, help="flow steps per level")
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--wall", type=float, default=None, help="also report test bits/dim at S s of training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.seed = args.seeds[0]
        print(json.dumps(worker(args)))
        return
    shared = list(argv if argv is not None else sys.argv[1:])
    results = []
    for seed in args.seeds:
        for impl in args.impl:
            cmd = [sys.executable, __file__, *_without(shared, ("--impl", "--seeds", "--json")),
                   "--worker", impl, "--seeds", str(seed)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    _report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` less the named options and their values."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a in options
        if not skip:
            out.append(a)
    return out


def _report(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.levels} levels x {args.flow_steps} steps x {args.hidden} hidden, {args.steps} steps, "
          f"batch {args.batch}, lr {args.lr} (warm-up {args.warmup}), test bits/dim on {args.test} MNIST "
          f"test images at 32x32x1")
    wall = f" | at {args.wall:.0f} s (step)" if args.wall else ""
    print(f"| contestant | test bits/dim, per seed | median | train s (median){wall} |")
    print("|---|---|---|---|" + ("---|" if args.wall else ""))
    for impl in args.impl:
        runs = [r for r in results if r["impl"] == impl]
        bpd = [r.get("bpd", float("nan")) for r in runs]
        secs = [r.get("train_s", float("nan")) for r in runs]
        row = f"| {impl} | {' / '.join(f'{b:.3f}' for b in bpd)} | {statistics.median(bpd):.3f} | {statistics.median(secs):.0f}"
        if args.wall:
            row += " | " + " / ".join(f"{r['at_wall'][2]:.3f} ({r['at_wall'][0]})" if r.get("at_wall") else "-"
                                      for r in runs)
        print(row + " |")


if __name__ == "__main__":
    main()
