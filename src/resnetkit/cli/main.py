"""Entry point of the ``resnetkit`` command.

Each command group lives in its own module and exposes ``add_parser(subparsers)``, which
registers the group and sets ``func`` (``args -> exit code``) on every leaf parser. This
module only dispatches and turns a :class:`~resnetkit.errors.ResNetKitError` into a
one-line message and exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from resnetkit import __version__
from resnetkit.cli import compress as compress_cli
from resnetkit.cli import evaluate as evaluate_cli
from resnetkit.cli import export as export_cli
from resnetkit.cli import models as models_cli
from resnetkit.cli import registry as registry_cli
from resnetkit.cli import train as train_cli
from resnetkit.errors import ResNetKitError

COMMAND_GROUPS = (models_cli, train_cli, registry_cli, evaluate_cli, export_cli, compress_cli)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="resnetkit",
        description="Residual networks from data to a monitored production service.",
    )
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except ResNetKitError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
