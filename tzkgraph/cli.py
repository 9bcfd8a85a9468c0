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
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


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
