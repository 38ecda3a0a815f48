"""``resnetkit drift --model REF --data D``: is this data what the model was trained on?

Compares a sample of ``D`` with the model's training-time reference (embeddings and softmax
outputs of held-out training images, ``drift_reference.safetensors``) through the four
detectors of :mod:`resnetkit.monitor.drift`, writes ``drift.json`` and ``drift.png``, and
prints ``drift detected`` or ``no drift`` with the evidence. Exit status 0 either way; 1 only
on an error. ``--make-reference`` builds a reference from ``D`` for a model without one, and
the out-of-distribution detector (``ood_detector.npz``, :mod:`resnetkit.monitor.ood`) fitted
on a held-out sample of ``D``'s test split; put both in the model's folder to serve the flag.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from resnetkit.cli.common import add_registry_flag, check_at_least, print_json, status
from resnetkit.contract import DRIFT_REFERENCE, write_json
from resnetkit.errors import DriftError
from resnetkit.export import LoadedModel, load_model_ref
from resnetkit.fileio import atomic_write, check_output_dir

DRIFT_JSON = "drift.json"
DRIFT_PNG = "drift.png"


def add_parser(subparsers: Any) -> None:
    """Register ``drift``."""
    p = subparsers.add_parser(
        "drift",
        help="compare data with a model's training-time reference: drift or not",
        description="Run the drift detectors on a sample of a dataset against the model's "
        "reference; write drift.json and drift.png. Exit 0 whatever the verdict.",
    )
    p.add_argument("--model", required=True, metavar="REF", help="run dir, .onnx or name@alias")
    add_registry_flag(p)
    p.add_argument("--data", required=True, help="dataset name (fashion-mnist, mnist) or folder")
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--sample", type=int, default=1000, help="images drawn from the split")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn; the tests' seed")
    p.add_argument("--reference", type=Path, help="a reference file other than the model's")
    p.add_argument(
        "--make-reference",
        action="store_true",
        help="build a reference from --data (its train split) instead of testing",
    )
    p.add_argument("--out", type=Path, default=Path("drift-report"), help="output folder")
    p.add_argument("--json", action="store_true", help="print drift.json to stdout")
    p.set_defaults(func=run_drift)


def _make_reference_hint(args: argparse.Namespace) -> str:
    return (
        f"build one with `resnetkit drift --model {args.model} --data DATA --make-reference`, "
        "then pass --reference"
    )


def _sample(
    loaded: LoadedModel, args: argparse.Namespace, split: str, min_images: int
) -> torch.Tensor:
    """Up to ``--sample`` images of ``split``; fewer than ``min_images`` is an error that
    speaks of the user's data, not of the detectors' windows."""
    data = loaded.dataset(split, data=args.data)
    if len(data) < min_images:
        other = " (a folder of class folders keeps a share of its images as test)"
        raise DriftError(
            f"--data {args.data} has {len(data)} images in its {split} split; drift detection "
            f"needs at least {min_images}: give more images"
            + (f", or pass --split train{other}" if split == "test" else "")
        )
    if len(data) > args.sample:
        gen = torch.Generator().manual_seed(args.seed)
        index = torch.randperm(len(data), generator=gen)[: args.sample]
        return data.images[index]
    return data.images


def _make_reference(loaded: LoadedModel, args: argparse.Namespace, min_images: int) -> int:
    from resnetkit.cli.robustness import ood_outputs
    from resnetkit.monitor.ood import OOD_FILE, OODDetector

    images = _sample(loaded, args, "train", min_images)
    held_out = loaded.dataset("test", data=args.data)
    if len(held_out) > args.sample:  # the test split, never trained on: the detector's data
        pick = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(args.seed))
        held_out = held_out.subset(pick[: args.sample])
    cpu = torch.device("cpu")
    with status(f"embedding {len(images)} training and {len(held_out)} test images"):
        embeddings, probabilities = loaded.embed(images)
        _, logits = ood_outputs(loaded, images.numpy(), cpu)
        test_emb, test_logits = ood_outputs(loaded, held_out.images.numpy(), cpu)
    target = args.out / DRIFT_REFERENCE
    tensors = {
        "embeddings": embeddings.contiguous(),
        "probabilities": probabilities.contiguous(),
        "labels": torch.full((len(images),), -1, dtype=torch.int64),  # unknown here
        "logits": torch.from_numpy(logits).float().contiguous(),
    }
    detector = None
    if test_emb is not None:
        source = f"test split of {args.data} ({len(held_out)} images, seed {args.seed})"
        detector = OODDetector.fit(
            test_emb, test_logits, held_out.labels.numpy(), source=source, seed=args.seed
        )
    atomic_write(target, lambda p: save_file(tensors, str(p)))
    print(f"wrote {target} ({len(images)} images of {args.data}); use it with --reference")
    if detector is None:
        print("no OOD detector: the model has no embedding output")
        return 0
    detector.save(args.out / OOD_FILE)
    print(
        f"wrote {args.out / OOD_FILE} (calibrated on the {detector.source}); copy both into "
        "the model's folder to serve the out-of-distribution flag"
    )
    return 0


def run_drift(args: argparse.Namespace) -> int:
    """``resnetkit drift``: a verdict with its evidence, or a new reference."""
    from resnetkit.monitor.drift import DriftReference, DriftSettings
    from resnetkit.monitor.drift_plots import plot_drift

    min_images = DriftSettings().min_window
    check_at_least("--sample", args.sample, min_images)
    check_output_dir(args.out, what="--out")
    if args.reference is not None and not args.reference.exists():
        raise DriftError(
            f"--reference {args.reference} does not exist; {_make_reference_hint(args)}"
        )
    loaded = load_model_ref(args.model, registry=args.registry)
    if args.make_reference:
        return _make_reference(loaded, args, min_images)
    path = args.reference or loaded.drift_reference
    if path is None:
        raise DriftError(
            f"{loaded.identity.label} has no drift reference (runs trained before references "
            f"existed, and .onnx files, have none); {_make_reference_hint(args)}"
        )
    reference = DriftReference.from_file(path)
    images = _sample(loaded, args, args.split, reference.settings.min_window)
    with status(f"embedding {len(images)} images of {args.data}"):
        embeddings, probabilities = loaded.embed(images)
    report = reference.evaluate(embeddings.numpy(), probabilities.numpy(), seed=args.seed)
    result = {**report.to_dict(), "model": loaded.identity.label, "data": args.data}
    write_json(args.out / DRIFT_JSON, result)
    plot_drift(
        reference, embeddings.numpy(), probabilities.numpy(), report, args.out / DRIFT_PNG,
        class_names=loaded.labels or None,
    )  # fmt: skip
    if args.json:
        print_json(result)
        return 0
    console = Console()
    console.print(_table(report))
    verdict = "[bold red]drift detected[/]" if report.drift_detected else "[bold green]no drift[/]"
    console.print(
        f"{verdict}: {args.data} ({args.split}, {len(images)} images) against "
        f"{loaded.identity.label}'s reference ({report.reference_size} images), "
        f"alpha {report.alpha:g} with Holm's correction"
    )
    console.print(f"wrote {args.out / DRIFT_JSON} and {args.out / DRIFT_PNG}")
    return 0


def _table(report: Any) -> Table:
    table = Table(title="drift detectors")
    for col in ("detector", "statistic", "p-value", "drift"):
        table.add_column(col, justify="left" if col == "detector" else "right")
    for r in report.results:
        table.add_row(r.name, f"{r.statistic:.4g}", f"{r.p_value:.3g}", "yes" if r.drift else "no")
    return table
