"""The `iounet` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from iounet import version

# Modules that add subcommands: each has `register(subparsers)`, which adds its parsers and sets
# `run=<function(args) -> int>` on each; heavy imports stay inside the run functions.
COMMAND_MODULES: tuple[str, ...] = (
    "iounet.training.commands",
    "iounet.export.commands",
    "iounet.export.engine_commands",
    "iounet.runtime.commands",
    "iounet.runtime.serving_commands",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `iounet` command."""
    parser = argparse.ArgumentParser(
        prog="iounet",
        description="IoU-Net deployment stack: train, export, build engines, run and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"iounet {version.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `iounet` command; return its exit status.

    The command's own status (0: done), or 2 for bad input (one line on stderr, no traceback),
    3 when out of memory, 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (OSError, ValueError, ImportError) as error:
        # Bad input (missing or existing files, malformed data, invalid settings, an optional
        # package that is not installed): one line.
        print(f"iounet {args.command}: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:
        print(f"iounet {args.command}: out of memory {error}".rstrip(), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        # Outputs are written atomically, so an interrupted command leaves no partial file.
        print(f"iounet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
