"""``resnetkit eval RUN_OR_MODEL_DIR --data NAME``: score a saved model on a test split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from resnetkit.data import ImageDataset, PreprocessingSpec, load_dataset
from resnetkit.errors import ConfigError
from resnetkit.evaluate import EvalReport, check_dataset_fits, evaluate_model
from resnetkit.models import ModelCard, load_model

_MODEL_FILES = ("model.json", "model.safetensors")


def add_parser(subparsers: Any) -> None:
    """Register the ``eval`` command."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained model: accuracy, per-class F1, calibration, plots",
        description="Evaluate a run or model directory (model.json + model.safetensors) on a "
        "dataset split; write eval.json and plots/*.png.",
    )
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR", help="run or model directory")
    parser.add_argument("--data", required=True, help="dataset name, e.g. fashion-mnist")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the dataset lives")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--batch-size", type=int, default=512, help="images per forward pass")
    parser.add_argument("--tta-flip", action="store_true", help="average with mirrored images")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast on CPU, as `resnetkit train` evaluates a bf16 run (CUDA: always)",
    )
    parser.add_argument(
        "--tta-shift", type=int, default=0, metavar="PX", help="also average shifted images"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: the run)")
    parser.add_argument("--json", action="store_true", help="print eval.json to stdout")
    parser.set_defaults(func=run_eval)


def _model_dir(path: str) -> Path:
    """The directory holding ``model.json``; a path to one of the model files is accepted."""
    p = Path(path)
    if p.is_file() and p.name in _MODEL_FILES:
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{path}: no such run or model directory")
    if not (p / "model.json").is_file():
        raise ConfigError(
            f"{path}: no model.json here; pass a finished run directory or a model directory "
            "(model.json + model.safetensors)"
        )
    return p


def _spec_of(card: ModelCard, directory: Path) -> PreprocessingSpec:
    if not card.preprocessing:
        raise ConfigError(f"{directory / 'model.json'} has no preprocessing spec to evaluate with")
    return PreprocessingSpec.from_dict(card.preprocessing)


def _default_device(device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_labels(card: ModelCard, dataset: ImageDataset, console: Console) -> None:
    if card.labels and len(card.labels) != dataset.num_classes:
        raise ConfigError(
            f"the model knows {len(card.labels)} classes but {dataset.name} has "
            f"{dataset.num_classes}; evaluate it on the data it was trained for"
        )
    if card.labels and tuple(card.labels) != dataset.classes:
        console.print(
            f"[yellow]warning:[/] the model's labels differ from {dataset.name}'s class names; "
            "reporting the dataset's names"
        )


def run_eval(args: argparse.Namespace) -> int:
    """Load the model and the data, evaluate, print a summary and write the results."""
    directory = _model_dir(args.path)
    device = _default_device(args.device)
    model, card = load_model(directory, device=device)
    spec = _spec_of(card, directory)
    dataset = load_dataset(args.data, args.split, data_dir=args.data_dir, limit=args.limit)
    check_dataset_fits(dataset, spec)
    err = Console(stderr=True)
    _check_labels(card, dataset, err)
    report = evaluate_model(
        model,
        dataset,
        spec,
        device=device,
        batch_size=args.batch_size,
        tta_flip=args.tta_flip,
        tta_shift=args.tta_shift,
        amp=True if args.amp else None,
        progress=not args.json and sys.stderr.isatty(),
    )
    written = report.save(args.out if args.out is not None else directory)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    console = Console()
    console.print(summary_table(report, title=f"{card.arch} on {dataset.name} ({dataset.split})"))
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
