"""``resnetkit eval REF``: score a saved model (run, ``.onnx`` or registry version) on a split."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from resnetkit.cli.common import add_registry_flag, check_at_least, print_json
from resnetkit.data import ImageDataset, has_fixed_shape, load_dataset
from resnetkit.errors import ConfigError
from resnetkit.evaluate import EvalReport, check_dataset_fits, evaluate_model, resolve_device
from resnetkit.export import LoadedModel, load_model_ref
from resnetkit.fileio import check_output_dir


def add_parser(subparsers: Any) -> None:
    """Register the ``eval`` command."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained model: accuracy, per-class F1, calibration, plots",
        description="Evaluate a model (run directory, .onnx file or registry reference such as "
        "fashion@production) on a dataset split; write eval.json and plots/*.png.",
    )
    parser.add_argument("ref", metavar="REF", help="run directory, .onnx file or name@alias")
    add_registry_flag(parser)
    parser.add_argument("--data", help="dataset name or folder (default: the model's own data)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the dataset lives")
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument("--batch-size", type=int, default=512, help="images per forward pass")
    parser.add_argument("--tta-flip", action="store_true", help="average with mirrored images")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast (fp16 on older CUDA), as `resnetkit train` evaluates its runs",
    )
    parser.add_argument(
        "--tta-shift", type=int, default=0, metavar="PX", help="also average shifted images"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="image folders: skip unreadable files (they are listed) instead of failing",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the run directory)"
    )
    parser.add_argument("--json", action="store_true", help="print eval.json to stdout")
    parser.set_defaults(func=run_eval)


def _default_out(loaded: LoadedModel) -> Path:
    """The run directory for a path; ``eval-<name>-v<version>`` here for a registry version."""
    if loaded.identity.version is None:
        return loaded.folder
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", loaded.identity.name)
    return Path(f"eval-{name}-v{loaded.identity.version}")


def _dataset(args: argparse.Namespace, loaded: LoadedModel) -> ImageDataset:
    if args.data is None and args.data_dir is None:
        return loaded.dataset(args.split, limit=args.limit)
    spec = loaded.spec
    name = args.data or "image-folder"
    fixed = has_fixed_shape(name)  # its own size; check_dataset_fits compares it with ours
    return load_dataset(
        name, args.split, data_dir=args.data_dir, limit=args.limit,
        image_size=None if fixed else spec.size, channels=None if fixed else spec.channels,
        skip_bad_images=args.skip_bad_images,
    )  # fmt: skip


def _check_labels(loaded: LoadedModel, dataset: ImageDataset, console: Console) -> None:
    labels = loaded.labels
    if labels and len(labels) != dataset.num_classes:
        raise ConfigError(
            f"the model knows {len(labels)} classes but {dataset.name} has "
            f"{dataset.num_classes}; evaluate it on the data it was trained for"
        )
    if labels and tuple(labels) != dataset.classes:
        console.print(
            f"[yellow]warning:[/] the model's labels differ from {dataset.name}'s class names; "
            "reporting the dataset's names"
        )


def run_eval(args: argparse.Namespace) -> int:
    """Load the model and the data, evaluate, print a summary and write the results."""
    check_at_least("--batch-size", args.batch_size, 1)
    check_at_least("--limit", args.limit, 1)
    check_at_least("--tta-shift", args.tta_shift, 0)
    device = resolve_device(args.device)
    if args.out is not None:
        check_output_dir(args.out, what="--out")
    loaded = load_model_ref(args.ref, registry=args.registry)
    out = args.out if args.out is not None else _default_out(loaded)
    check_output_dir(out, what="--out")
    dataset = _dataset(args, loaded)
    check_dataset_fits(dataset, loaded.spec)
    err = Console(stderr=True)
    _check_labels(loaded, dataset, err)
    model: Any
    if loaded.has_weights:
        model = loaded.module(device)
    else:
        model = loaded.backend("onnx", device=str(device)).predict
    report = evaluate_model(
        model,
        dataset,
        loaded.spec,
        device=device if loaded.has_weights else None,
        batch_size=args.batch_size,
        tta_flip=args.tta_flip,
        tta_shift=args.tta_shift,
        precision="auto" if args.amp else "fp32",
        progress=not args.json and sys.stderr.isatty(),
    )
    written = report.save(out)
    if args.json:
        print_json(report.to_dict())
        return 0
    console = Console()
    title = f"{loaded.identity.label} on {dataset.name} ({dataset.split})"
    console.print(summary_table(report, title=title))
    console.print(per_class_table(report))
    console.print(f"wrote {written['json']} and plots in {written['json'].parent / 'plots'}")
    return 0


def summary_table(report: EvalReport, *, title: str) -> Table:
    """The headline metrics as a two-column table."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("top-1 accuracy", f"{report.top1:.2%}"),
        ("top-5 accuracy", f"{report.top5:.2%}"),
        ("macro F1", f"{report.macro_f1:.4f}"),
        ("ECE (15 bins)", f"{report.ece:.4f}"),
        ("NLL", f"{report.nll:.4f}"),
        ("images", f"{report.num_samples:,}"),
        ("images/s", f"{report.images_per_s:,.0f}"),
        ("flip TTA", "yes" if report.tta_flip else "no"),
        ("shift TTA", f"{report.tta_shift} px" if report.tta_shift else "no"),
        ("precision / device", f"{report.precision} / {report.device}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def per_class_table(report: EvalReport) -> Table:
    """Precision, recall, F1 and support for every class."""
    table = Table(title="per class")
    table.add_column("class")
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    for c in report.per_class:
        table.add_row(
            c.label, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support)
        )
    return table
