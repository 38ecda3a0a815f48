"""``resnetkit monitor ...``: Prometheus rules and Grafana dashboards from an SLO file.

``resnetkit monitor rules -o rules.yml [--slo FILE]`` writes the recording and alerting
rules; ``resnetkit monitor dashboards -o DIR [--slo FILE]`` writes one JSON file per
dashboard. Without ``--slo`` the defaults apply (those of ``configs/monitor/slo.toml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from resnetkit.errors import ConfigError
from resnetkit.fileio import check_output_dir, check_output_file
from resnetkit.monitor.dashboards import write_dashboards
from resnetkit.monitor.slo import alert_names, load_slo, write_rules

RULE_SUFFIXES = (".yml", ".yaml")


def add_parser(subparsers: Any) -> None:
    """Register the ``monitor`` command group."""
    parser = subparsers.add_parser(
        "monitor", help="Prometheus alert rules and Grafana dashboards from SLOs"
    )
    sub = parser.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    slo_help = "SLO file (TOML, see configs/monitor/slo.toml; default: the built-in defaults)"

    rules = sub.add_parser("rules", help="write Prometheus recording and alerting rules")
    rules.add_argument("-o", "--output", required=True, type=Path, help="rules file (.yml)")
    rules.add_argument("--slo", type=Path, metavar="FILE", help=slo_help)
    rules.set_defaults(func=run_rules)

    dash = sub.add_parser("dashboards", help="write Grafana dashboards (JSON)")
    dash.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    dash.add_argument("--slo", type=Path, metavar="FILE", help=slo_help)
    dash.set_defaults(func=run_dashboards)


def run_rules(args: argparse.Namespace) -> int:
    """Write the rule file and say what is in it."""
    path = check_output_file(args.output, what="rules file")
    if path.suffix.lower() not in RULE_SUFFIXES:
        raise ConfigError(f"rules file {path} should end in .yml or .yaml")
    rules = write_rules(load_slo(args.slo), path)
    records = sum("record" in r for g in rules["groups"] for r in g["rules"])
    alerts = alert_names(rules)
    groups = len(rules["groups"])
    print(f"wrote {path}: {groups} groups, {records} recording rules, {len(alerts)} alerts")
    print(f"  alerts: {', '.join(alerts)}")
    print(f"  check it with: promtool check rules {path}")
    return 0


def run_dashboards(args: argparse.Namespace) -> int:
    """Write the dashboards and list them."""
    folder = check_output_dir(args.output, what="dashboard folder")
    slo = load_slo(args.slo)
    for path in write_dashboards(slo, folder):
        print(f"wrote {path}")
    print("  import them in Grafana (Dashboards > New > Import) or provision the folder")
    return 0
