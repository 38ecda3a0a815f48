"""``resnetkit pipeline run|compile``: the gated promotion pipeline.

``run`` trains (or takes ``--candidate``), evaluates the candidate beside NAME's production
version, gates it, registers it with its blessing and lineage, and moves the ``candidate``
alias or starts a canary rollout on ``--server``. ``compile --target kfp`` writes the same
steps as a Kubeflow Pipelines v2 spec. ``serve`` (Alertmanager webhook) lives in
:mod:`resnetkit.cli.pipeline_serve` and is registered here when that module exists.

Exit status of ``run``: 0 blessed (and promoted, with ``--server``), 3 not blessed,
4 blessed but the canary was rolled back, aborted or timed out; 1 for an error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from resnetkit.cli.common import print_json

try:
    from resnetkit.cli import pipeline_serve
except ImportError:  # the webhook lands in its own module
    pipeline_serve = None  # type: ignore[assignment]

#: ``run``'s exit status by outcome.
EXIT_CODES = {"blessed": 0, "promoted": 0, "not_blessed": 3}
EXIT_ROLLOUT_FAILED = 4


def add_parser(subparsers: Any) -> None:
    """Register the ``pipeline`` group."""
    parser = subparsers.add_parser(
        "pipeline", help="train, gate against production, register and roll out, unattended"
    )
    sub = parser.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="train -> evaluate -> gate -> register -> rollout")
    run.add_argument("config", nargs="?", help="pipeline file (TOML); default: the defaults")
    run.add_argument("--name", required=True, help="the registered model to gate against")
    run.add_argument("--candidate", metavar="REF", help="gate this model instead of training")
    run.add_argument("--server", metavar="URL", help="start the blessed candidate's canary here")
    run.add_argument("--admin-token-file", metavar="FILE",
                     help="the server's admin token (default: $RESNETKIT_ADMIN_TOKEN)")  # fmt: skip
    run.add_argument("--out", required=True, metavar="DIR", help="the run's folder (resumable)")
    run.add_argument("--json", action="store_true", help="print pipeline.json instead of a table")
    run.add_argument("--until", metavar="STEP", help="stop after this step (train, evaluate, ...)")
    run.set_defaults(func=run_command)
    compile_ = sub.add_parser("compile", help="compile the steps for another engine (kfp)")
    compile_.add_argument("--target", choices=("kfp",), default="kfp", help="the engine")
    compile_.add_argument("-o", "--output", required=True, metavar="FILE", help="the YAML file")
    compile_.add_argument("--image", help="default container image (a pipeline parameter)")
    compile_.set_defaults(func=compile_command)
    if pipeline_serve is not None:
        pipeline_serve.add_parser(sub)


def _progress(step: str, message: str) -> None:
    print(f"[{step}] {message}", file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace) -> int:
    """``pipeline run [FILE] --name NAME --out DIR``."""
    from resnetkit.pipeline import admin_token_from, load_pipeline_config
    from resnetkit.pipeline.runner import run_steps

    config = load_pipeline_config(args.config)
    check_canary_settings(config.rollout.canary)
    token = admin_token_from(args.admin_token_file) if args.server else None
    result = run_steps(
        config, name=args.name, candidate=args.candidate, server=args.server, out_dir=args.out,
        admin_token=token, progress=_progress, until=args.until,
    )  # fmt: skip
    if result is None:
        print(f"stopped after {args.until}; rerun without --until to finish", file=sys.stderr)
        return 0
    if args.json:
        print_json(result.to_dict())
    else:
        show_result(result.to_dict())
    return EXIT_CODES.get(result.outcome, EXIT_ROLLOUT_FAILED)


def check_canary_settings(canary: dict[str, Any]) -> None:
    """The ``[rollout.canary]`` table, checked as the server will, before any training.

    Raises:
        ConfigError: an unknown key or a bad value, named.
    """
    from resnetkit.errors import ConfigError
    from resnetkit.serve.rollout import RolloutConfig

    try:
        RolloutConfig.from_mapping(canary)
    except ConfigError as exc:
        raise ConfigError(f"rollout.canary: {exc}") from exc


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def show_result(result: dict[str, Any]) -> None:
    """The checks as a table, then the verdict and what happened to the version."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    baseline = result["baseline"] or "no baseline (value thresholds only)"
    table = Table(title=f"gate: {result['candidate']} against {baseline}")
    for column in ("check", "value", "threshold", "verdict", "detail"):
        table.add_column(column)
    for check in result["checks"]:
        verdict = "pass" if check["passed"] else "[red]FAIL[/]"
        table.add_row(check["name"], _num(check["value"]), _num(check["threshold"]), verdict,
                      check.get("detail", ""))  # fmt: skip
    console.print(table)
    verdict = "[green]blessed[/]" if result["blessed"] else "[red]not blessed[/]"
    rollout = result.get("rollout") or {}
    console.print(f"{result['candidate']}: {verdict}; rollout: {rollout.get('state', '-')} "
                  f"({rollout.get('reason', '')})")  # fmt: skip
    console.print(f"pipeline.json: {result['out_dir']}/pipeline.json")


def compile_command(args: argparse.Namespace) -> int:
    """``pipeline compile --target kfp -o FILE``."""
    from resnetkit.pipeline.kfp import compile_kfp

    written = compile_kfp(args.output, image=args.image)
    print(f"wrote {written}")
    return 0
