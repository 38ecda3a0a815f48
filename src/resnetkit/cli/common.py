"""What several commands share: a status line on stderr, argument checks, JSON output."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from resnetkit.errors import ConfigError

__all__ = [
    "add_registry_flag",
    "check_at_least",
    "print_json",
    "status",
]


def add_registry_flag(parser: argparse.ArgumentParser) -> None:
    """``--registry URL`` for commands that take registry references."""
    parser.add_argument(
        "--registry",
        metavar="URL",
        help="registry for name@alias references (default: $RESNETKIT_REGISTRY, "
        "else sqlite:///./resnetkit.db)",
    )


@contextlib.contextmanager
def status(message: str, *, enabled: bool = True) -> Iterator[None]:
    """A spinner with ``message`` on stderr while the block runs (nothing when redirected)."""
    from rich.console import Console  # imported here: `resnetkit serve` starts without it

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def check_at_least(flag: str, value: float | None, minimum: float, *, strict: bool = False) -> None:
    """Refuse ``value`` below ``minimum`` (or equal to it with ``strict``), naming the flag.

    Raises:
        ConfigError: the value is out of range.
    """
    if value is None:
        return
    if value < minimum or (strict and value == minimum):
        bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
        raise ConfigError(f"{flag} must be {bound}, got {value:g}")


def print_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
