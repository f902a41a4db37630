"""The `iounet` command line: one subcommand per job (later issues add them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from iounet._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `iounet` command."""
    parser = argparse.ArgumentParser(
        prog="iounet",
        description="IoU-Net deployment stack: train, export, build engines, run and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"iounet {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `iounet` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
