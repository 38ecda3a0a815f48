"""Entry point of the ``resnetkit`` command.

Each command group lives in its own module and exposes ``add_parser(subparsers)``, which
registers the group and sets ``func`` (``args -> exit code``) on every leaf parser. This
module only dispatches and turns a :class:`~resnetkit.errors.ResNetKitError` into a
one-line message and exit status 1; ``--debug`` shows the traceback instead.

A command imports only its own group: ``resnetkit train`` does not pay for ONNX Runtime and
SQLAlchemy (0.4 s of its 2.3 s start-up on a 2-core CI machine). Help and unknown commands
import every group, so argparse lists them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from resnetkit import __version__
from resnetkit.errors import ResNetKitError

# Top-level command → the module under resnetkit.cli that registers it, in help order.
COMMAND_GROUPS: dict[str, str] = {
    "models": "models",
    "train": "train",
    "registry": "registry",
    "eval": "evaluate",
    "export": "export",
    "quantize": "export",
    "bench": "export",
    "prune": "compress",
    "distill": "compress",
    "tradeoff": "compress",
}


def _group_modules(command: str | None) -> list[str]:
    """The modules to import for ``command``: its own, or all of them when unknown."""
    if command in COMMAND_GROUPS:
        return [COMMAND_GROUPS[command]]
    return list(dict.fromkeys(COMMAND_GROUPS.values()))


def _command_in(argv: Sequence[str]) -> str | None:
    """The first argument that is not a top-level option (they take no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with the group of ``command`` registered, or every group."""
    parser = argparse.ArgumentParser(
        prog="resnetkit",
        description="Residual networks from data to a monitored production service.",
    )
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _group_modules(command):
        importlib.import_module(f"resnetkit.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
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
