"""``resnetkit models list|info``: browse the zoo."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from resnetkit.models import create_model, get_entry, list_models, profile


def add_parser(subparsers: Any) -> None:
    """Register the ``models`` command group."""
    parser = subparsers.add_parser("models", help="list and inspect the model zoo")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="a table of every model: family, params, MACs")
    ls.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet5*'")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_list)
    info = sub.add_parser("info", help="layers, parameters, MACs and feature shapes of a model")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=run_info)


def describe(name: str) -> dict[str, Any]:
    """Everything ``models info`` shows, as plain data (built on the meta device: no memory)."""
    entry = get_entry(name)
    model = create_model(name, device="meta")
    prof = profile(model, entry.input_size)
    counts = {
        "conv": sum(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()),
        "linear": sum(isinstance(m, nn.Linear) for m in model.modules()),
    }
    return {
        "name": name,
        "family": entry.family,
        "description": entry.description,
        "arguments": {k: v for k, v in entry.defaults.items()},
        "layers": counts,
        "params": prof.params,
        "macs": prof.macs,
        "input_size": list(prof.input_size),
        "stage_shapes": [list(s) for s in prof.stage_shapes],
        "output_shape": list(prof.output_shape),
    }


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def _giga(n: int) -> str:
    return f"{n / 1e9:,.3f}G"


def run_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    rows = [describe(n) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"resnetkit model zoo ({len(rows)} models)")
    for col, justify in (("name", "left"), ("family", "left"), ("params", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("MACs", justify="right")
    table.add_column("input", justify="left")
    for r in rows:
        size = "x".join(map(str, r["input_size"]))
        table.add_row(r["name"], r["family"], _millions(r["params"]), _giga(r["macs"]), size)
    Console().print(table)
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = describe(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = Console()
    console.print(f"[bold]{info['name']}[/bold] ({info['family']}) {info['description']}")
    console.print(
        f"parameters {info['params']:,} ({_millions(info['params'])}), "
        f"MACs {_giga(info['macs'])} at input {tuple(info['input_size'])}, "
        f"{info['layers']['conv']} conv + {info['layers']['linear']} linear layers"
    )
    if info["arguments"]:
        args_text = ", ".join(f"{k}={v!r}" for k, v in info["arguments"].items())
        console.print(f"arguments: {args_text}")
    table = Table(title="feature shapes per stage (one sample)")
    table.add_column("stage")
    table.add_column("shape")
    for i, shape in enumerate(info["stage_shapes"], start=1):
        table.add_row(str(i), " x ".join(map(str, shape)))
    table.add_row("logits", " x ".join(map(str, info["output_shape"])))
    console.print(table)
    return 0
