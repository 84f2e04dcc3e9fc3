"""The `medsam` command. Thin: parse arguments, call the Python API, report; errors exit with status 2.

Each subcommand lives in its own module of this package with a ``register(subparsers)`` function that
adds its parser and sets ``func``; list the module in SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from medsam import __version__
from medsam.errors import MedsamError

SUBCOMMANDS = [
    "medsam.cli.segment",
    "medsam.cli.models",
    "medsam.cli.evaluate",
    "medsam.cli.segment_volume",
    "medsam.cli.segment_video",
    "medsam.cli.finetune",
    "medsam.cli.serve",
    "medsam.cli.everything",
    "medsam.cli.batch",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsam", description="Segment anything in medical images (LiteMedSAM, MedSAM, SAM)."
    )
    parser.add_argument("--version", action="version", version=f"medsam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedsamError as exc:
        print(f"medsam {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medsam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
