"""Entry point of the ``resnetkit`` command.

Each command group lives in its own module and exposes ``add_parser(subparsers)``, which
registers the group and sets ``func`` (``args -> exit code``) on every leaf parser. This
module only dispatches and turns a :class:`~resnetkit.errors.ResNetKitError` into a
one-line message and exit status 1; ``--debug`` (anywhere on the line) shows the traceback
instead.

A command imports only its own group: ``resnetkit train`` does not pay for ONNX Runtime and
SQLAlchemy. The top-level help and an unknown command import no group at all: they list the
commands from :data:`COMMANDS`, so ``resnetkit --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence

from resnetkit import __version__
from resnetkit.errors import EXTRAS, MissingDependency, ResNetKitError

#: Top-level command → (the module under resnetkit.cli that registers it, one line of help),
#: in help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "list and inspect the model zoo"),
    "train": ("train", "train a zoo model on real data into a run directory"),
    "eval": ("evaluate", "evaluate a model: accuracy, per-class F1, calibration, plots"),
    "registry": ("registry", "versioned models, aliases and their history"),
    "export": ("export", "export a model to ONNX, with a parity check"),
    "quantize": ("export", "static int8 (QDQ) ONNX, with an accuracy budget"),
    "bench": ("export", "latency and throughput of every backend"),
    "prune": ("compress", "remove filters structurally, then fine-tune"),
    "distill": ("compress", "train a small student from a teacher's outputs"),
    "tradeoff": ("compress", "accuracy, size and speed of a model's variants"),
    "serve": ("serve", "serve models over HTTP: predict, KServe V2, metrics"),
    "rollout": ("rollout", "canary rollouts: start, watch, promote, abort"),
    "drift": ("drift", "compare data with a model's training-time reference"),
    "explain": ("explain", "Grad-CAM heat maps of a model's decisions"),
    "robustness": ("robustness", "accuracy under corruptions (mCE) and adversarial attacks"),
    "monitor": ("monitor", "SLO alert rules and Grafana dashboards"),
    "pipeline": ("pipeline", "train, gate against production, register and roll out, unattended"),
    "data": ("data", "datasets from production: labelled request images for retraining"),
}
#: Command → module, for callers that only need the module.
COMMAND_GROUPS: dict[str, str] = {name: module for name, (module, _) in COMMANDS.items()}


def _command_in(argv: Sequence[str]) -> str | None:
    """The first argument that is not a top-level option (they take no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s group registered, or every command listed by name."""
    parser = argparse.ArgumentParser(
        prog="resnetkit",
        description="Residual networks from data to a monitored production service.",
    )
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
        importlib.import_module(f"resnetkit.cli.{COMMANDS[command][0]}").add_parser(subparsers)
    else:
        for name, (_, help_text) in COMMANDS.items():
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` may come anywhere on the line, before or after the command."""
    rest = [arg for arg in argv if arg != "--debug"]
    return rest, len(rest) != len(argv)


@contextlib.contextmanager
def _extras_named(command: str | None) -> Iterator[None]:
    """A package of an optional extra missing (PyTorch in the plain, serving-only install)
    becomes one line naming the extra, wherever the command first imports it."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EXTRAS:
            raise
        raise MissingDependency.for_module(exc.name, f"resnetkit {command}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    args_in, debug = _split_debug(sys.argv[1:] if argv is None else list(argv))
    command = _command_in(args_in)
    try:
        with _extras_named(command):
            parser = build_parser(command)
            args = parser.parse_args(args_in)
            args.debug = debug
            func = getattr(args, "func", None)
            if func is None:
                parser.print_help()
                return 2
            return int(func(args) or 0)
    except ResNetKitError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`resnetkit models list --json | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
