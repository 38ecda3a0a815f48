"""``resnetkit pipeline run|compile``: the gated promotion pipeline.

``run`` trains (or takes ``--candidate``), evaluates the candidate beside NAME's production
version, gates it, registers it with its blessing and lineage, and moves the ``candidate``
alias or starts a canary rollout on ``--server``. ``compile --target kfp`` writes the same
steps as a Kubeflow Pipelines v2 spec. ``serve`` (Alertmanager webhook) lives in
:mod:`resnetkit.cli.pipeline_serve` and is registered here when that module exists.
"""

from __future__ import annotations

import argparse
from typing import Any

try:
    from resnetkit.cli import pipeline_serve
except ImportError:  # the webhook lands in its own module
    pipeline_serve = None  # type: ignore[assignment]


def add_parser(subparsers: Any) -> None:
    """Register the ``pipeline`` group."""
    parser = subparsers.add_parser(
        "pipeline", help="train, gate against production, register and roll out, unattended"
    )
    sub = parser.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="train -> evaluate -> gate -> register -> rollout")
    run.add_argument("config", nargs="?", help="pipeline file (TOML); default: the defaults")
    run.set_defaults(func=_not_ready)
    if pipeline_serve is not None:
        pipeline_serve.add_parser(sub)


def _not_ready(args: argparse.Namespace) -> int:
    from resnetkit.errors import ConfigError

    raise ConfigError("resnetkit pipeline run: not available yet")
