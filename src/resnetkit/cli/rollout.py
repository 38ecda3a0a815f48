"""``resnetkit rollout start|status|promote|abort NAME --server URL``: canary rollouts.

A thin client of a running server's rollout API. ``start``, ``promote`` and ``abort`` need
the admin token (``$RESNETKIT_ADMIN_TOKEN``); ``status`` does not.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from resnetkit.cli.common import print_json
from resnetkit.config import load_toml, to_dict
from resnetkit.errors import ConfigError, ServeError
from resnetkit.serve.rollout import RolloutConfig

TOKEN_ENV = "RESNETKIT_ADMIN_TOKEN"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def add_parser(subparsers: Any) -> None:
    """Register the ``rollout`` group."""
    parser = subparsers.add_parser("rollout", help="canary rollouts: start, watch, promote, abort")
    sub = parser.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", help="the served model")
    common.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    start = sub.add_parser("start", parents=[common], help="start sending traffic to a canary")
    start.add_argument("--canary", required=True, metavar="NAME:V", help="the new version")
    start.add_argument("--steps", help="canary percent per step, e.g. 5,25,50,100")
    start.add_argument("--interval", help="analysis interval, e.g. 30s, 1m, 500ms")
    start.add_argument("--config", help="rollout file (TOML); flags override it")
    start.add_argument("--shadow", action="store_true", default=None, help="shadow, answer stable")
    start.set_defaults(func=run_start)
    for action, help_text in (
        ("status", "where a rollout stands: step, checks, outcome and reason"),
        ("promote", "promote the canary now"),
        ("abort", "stop the rollout; every request goes to stable"),
    ):
        leaf = sub.add_parser(action, parents=[common], help=help_text)
        leaf.set_defaults(func=run_action, action=action)


def parse_duration(text: str) -> float:
    """``30s``, ``1m``, ``500ms``, ``2h`` or a plain number of seconds.

    Raises:
        ConfigError: anything else.
    """
    found = _DURATION.match(text)
    if not found:
        raise ConfigError(f"--interval {text!r}: use e.g. 30s, 1m, 500ms")
    return float(found.group(1)) * _SECONDS[found.group(2)]


def _config(args: argparse.Namespace) -> RolloutConfig:
    data: dict[str, Any] = dict(load_toml(args.config)) if args.config else {}
    if args.steps:
        try:
            data["steps"] = [int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError as exc:
            raise ConfigError(
                f"--steps must be integers, e.g. 5,25,50,100: {args.steps!r}"
            ) from exc
    if args.interval:
        data["interval_s"] = parse_duration(args.interval)
    if args.shadow:
        data["shadow"] = True
    return RolloutConfig.from_mapping(data)  # checked here, before the server is asked


def _call(method: str, url: str, *, token: bool, body: Any = None) -> dict[str, Any]:
    headers = {}
    if token:
        secret = os.environ.get(TOKEN_ENV)
        if not secret:
            raise ConfigError(f"set {TOKEN_ENV} to the server's admin token")
        headers["Authorization"] = f"Bearer {secret}"
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise ServeError(f"cannot reach {url}: {exc}") from exc
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text[:200]}
    if response.status_code >= 400:
        raise ServeError(f"{response.status_code}: {payload.get('error', payload)}")
    return dict(payload)


def run_start(args: argparse.Namespace) -> int:
    """``rollout start NAME --canary NAME:V``."""
    body = {"model": args.name, "canary": args.canary, **to_dict(_config(args))}
    result = _call("POST", f"{args.server.rstrip('/')}/v1/admin/rollouts", token=True, body=body)
    show_rollout(result, as_json=args.json)
    return 0


def run_action(args: argparse.Namespace) -> int:
    """``rollout status|promote|abort NAME``."""
    base = args.server.rstrip("/")
    if args.action == "status":
        result = _call("GET", f"{base}/v1/rollouts/{args.name}", token=False)
    else:
        result = _call("POST", f"{base}/v1/admin/rollouts/{args.name}/{args.action}", token=True)
    show_rollout(result, as_json=args.json)
    return 0


def show_rollout(rollout: dict[str, Any], *, as_json: bool) -> None:
    """Print a rollout as the server describes it: who answers, the reason, the checks."""
    if as_json:
        print_json(rollout)
        return
    name, state = rollout["model"], rollout["state"]
    steps = rollout.get("steps") or []
    where = {
        "progressing": f"progressing at step {rollout['step'] + 1} of {len(steps)} "
        f"({_traffic(rollout)})",
        "promoted": "promoted",
        "rolled_back": "rolled back",
        "aborted": "aborted",
    }.get(state, state)
    console = Console()
    console.print(
        f"[bold]{name}[/]: {name}:{rollout['stable_version']} -> {name}:"
        f"{rollout['canary_version']}: [bold]{where}[/]"
    )
    console.print(f"reason: {rollout['reason']}")
    if rollout.get("checks"):
        table = Table(title="last analysis")
        for col in ("check", "value", "threshold", "verdict", "detail"):
            table.add_column(col)
        for check in rollout["checks"]:
            verdict = {True: "pass", False: "FAIL", None: "not enough data"}[check["passed"]]
            table.add_row(
                check["name"], _num(check["value"]), _num(check["threshold"]), verdict,
                check["detail"],
            )  # fmt: skip
        console.print(table)


def _traffic(rollout: dict[str, Any]) -> str:
    """Who answers: the canary's share, or shadow mode (it answers nobody)."""
    if rollout.get("mode") == "shadow":
        mirrored = rollout.get("mirrored_percent", 100.0)
        return f"shadow: stable answers every request; {mirrored:g}% also run on the canary"
    return f"{rollout['canary_weight']:g}% to the canary"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
