"""Sample accuracy of a trained graph, judged by an independent MNIST classifier.

For every digit path of the graph (``digits/0..9``, ``images/0..9``, ``images/bit0..3`` as the
4-bit label), samples down the path at each temperature are classified by the judge (a small
CNN trained once on MNIST train and cached, never part of any graph; its own test accuracy
is printed beside); then the two links of a hierarchy apart: reconstruction through a code
and the child's samples read back by the child's encoder (see tzkgraph.use.sample_quality).

    python tools/judge.py graphs/mnist_digits.yaml [--set KEY=VALUE ...] [-n 100] [--guide 0 64]

Writes ``RUN/judge.json`` (RUN the graph's run directory).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tzkgraph.core.runtime import seeded
from tzkgraph.data.dataset import load_graph_data
from tzkgraph.spec.load import load_spec
from tzkgraph.graph.rundir import load_trained, run_directory
from tzkgraph.use.judge import load_judge
from tzkgraph.use.sample_quality import (child_link, child_paths, digit_paths, links, reconstruction_link,
                                         sample_accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("graph")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-n", type=int, default=100, help="samples per digit (default: 100)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.0])
    parser.add_argument("--guide", type=int, nargs="+", default=[64],
                        help="M of sample --guide (default 64, as sample; 0: the decoder alone)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = load_spec(args.graph, args.overrides)
    model, _ = load_trained(spec)
    judge = load_judge()
    started = time.perf_counter()
    report = {"graph": spec.name, "judge_test_accuracy": judge.test_accuracy, "n": args.n, "paths": {},
              "reconstruction": {}, "child": {}}
    print(f"{spec.name}: the judge reads MNIST test digits at {judge.test_accuracy:.4f}; {args.n} samples per digit")
    paths = digit_paths(spec)
    for path in paths:
        for guide in args.guide:
            for temperature in args.temperatures:
                with seeded(args.seed):
                    result = sample_accuracy(model, spec, judge, path, args.n, temperature, guide)
                key = f"T={temperature:g}" + (f", guide={guide}" if guide else "")
                report["paths"].setdefault(path.name, {})[key] = result
                digits = " ".join(f"{d}:{a:.2f}" for d, a in result["per_digit"].items())
                print(f"  sample accuracy {path.name:16s} {key:18s} {result['accuracy']:.3f}   ({digits})")
    test = load_graph_data(spec.data, "test")
    for stage, k in links(spec):
        for temperature in args.temperatures:
            with seeded(args.seed):
                acc = reconstruction_link(model, spec, judge, test, stage, k, 10 * args.n, temperature)
            report["reconstruction"].setdefault(f"{stage}/{k}", {})[f"T={temperature:g}"] = acc
            print(f"  reconstruction through {stage}/{k} at T={temperature:g}: {acc:.3f}")
    for path in child_paths(spec, paths):
        for temperature in args.temperatures:
            with seeded(args.seed):
                acc = child_link(model, spec, path, args.n, temperature, max(args.guide))
            report["child"].setdefault(path.name, {})[f"T={temperature:g}"] = acc
            print(f"  {path.name}'s samples read back by its encoder at T={temperature:g}: {acc:.3f}")
    out = run_directory(spec) / "judge.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
