"""``resnetkit data export-feedback``: labelled production images as an ImageFolder.

Reads the server's prediction log (``resnetkit serve --prediction-log FILE --log-images``),
its rotated files, its ``images/`` folder and its feedback log (``FILE.feedback.jsonl``, every
label ``POST /v1/feedback`` accepted), joins them by request id and writes
``OUT/train/<class>/``, ``OUT/holdout/<class>/`` (the newest ``--holdout`` share) and
``OUT/manifest.json``, all at once or not at all. The log folder must be readable here: on
another machine, share it (a volume) — images are not served over HTTP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from resnetkit.data.feedback import export_feedback, parse_since


def add_parser(subparsers: Any) -> None:
    """Register ``data`` and its ``export-feedback`` leaf."""
    group = subparsers.add_parser(
        "data", help="datasets from production: labelled request images for retraining"
    )
    leaves = group.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = leaves.add_parser(
        "export-feedback",
        help="join logged request images with their feedback labels into an ImageFolder",
        description="Write OUT/train/<class>/, OUT/holdout/<class>/ (the newest requests) and "
        "OUT/manifest.json from a server's prediction log, its images and its feedback log.",
    )
    p.add_argument(
        "--log",
        required=True,
        type=Path,
        metavar="FILE",
        help="the server's --prediction-log file (served with --log-images)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="a new folder")
    p.add_argument(
        "--since", metavar="T", help="only requests since T: ISO 8601 time or 30m, 2h, 7d back"
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="newest fraction of the samples kept out of training (default 0.2)",
    )
    p.add_argument("--min-samples", type=int, default=1, help="fewer labelled images is an error")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_export_feedback)


def run_export_feedback(args: argparse.Namespace) -> int:
    """Run ``data export-feedback``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    since = parse_since(args.since) if args.since else None
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=args.no_progress or not console.is_terminal,
    )
    tasks: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        result = export_feedback(
            args.log,
            args.out,
            holdout=args.holdout,
            since=since,
            min_samples=args.min_samples,
            progress=progress,
        )
    manifest = result.manifest
    if args.json:
        json.dump(manifest, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    samples = manifest["samples"]
    print(
        f"wrote {samples['exported']} labelled images to {result.out} "
        f"({samples['train']} train, {samples['holdout']} holdout, "
        f"{len(manifest['classes'])} classes)"
    )
    left = {k: v for k, v in manifest["left_out"].items() if v}
    if left:
        print("left out: " + ", ".join(f"{k} {v}" for k, v in left.items()))
    return 0
