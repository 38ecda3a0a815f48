"""``resnetkit robustness --model REF --out DIR``: how a model degrades before it ships.

Accuracy on ``--images`` test images (1,000 by default) under fourteen common corruptions at
severities 1-5 (mCE against ``--baseline``), and under L-infinity FGSM and PGD (20 steps,
random start, step ``2.5 eps / steps``) at each ``--eps`` in [0, 1] pixel units, attacked
before normalisation. Writes ``DIR/robustness.json``, ``DIR/corruptions.png`` and
``DIR/attacks.png`` and prints a table. Every argument is checked before the first image is
corrupted; attacks need gradients, so the model must have torch weights.

The out-of-distribution part scores the model's OOD detector (``ood_detector.npz``, or one
fitted on its drift reference) on the test images and on far-OOD sets: MNIST digits for a
Fashion-MNIST model and the reverse, uniform noise, and ``skimage.data`` photos resized to the
input; AUROC and FPR at 95 % TPR per method beside the max-softmax baseline. That part lives
in ``resnetkit.monitor.ood_eval`` (the pipeline's gate uses it too); ``ood_outputs`` and
``ood_report`` stay importable from here.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from resnetkit.cli.common import add_registry_flag, check_at_least, print_json
from resnetkit.errors import CheckpointError, ConfigError
from resnetkit.evaluate import check_dataset_fits, resolve_device
from resnetkit.export import LoadedModel, load_model_ref
from resnetkit.fileio import atomic_write, check_output_dir
from resnetkit.monitor.corruptions import CORRUPTIONS, SEVERITIES, check_severities
from resnetkit.monitor.ood_eval import OTHER_DATASET, ood_report
from resnetkit.monitor.ood_eval import model_outputs as ood_outputs
from resnetkit.monitor.robustness import (
    Classify,
    CorruptionResult,
    corruption_accuracy,
    corruption_errors,
    plot_attack_accuracy,
    plot_corruption_accuracy,
)
from resnetkit.train.adversarial import (
    PixelSpaceModel,
    attack_correct,
    check_eps,
    clean_correct,
    worst_case_accuracy,
)

__all__ = ["OTHER_DATASET", "add_parser", "ood_outputs", "ood_report", "run_robustness"]

DEFAULT_EPS = (0.05, 0.1, 0.2, 0.3)
ROBUSTNESS_JSON = "robustness.json"


def _comma_list(convert: Callable[[str], Any], kind: str) -> Callable[[str], list[Any]]:
    """An argparse type: ``"0.05,0.1"`` to ``[0.05, 0.1]`` with ``convert``."""

    def parse(text: str) -> list[Any]:
        try:
            return [convert(v) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected {kind} separated by commas: {text}"
            ) from exc

    return parse


def add_parser(subparsers: Any) -> None:
    """Register ``robustness``."""
    p = subparsers.add_parser(
        "robustness",
        help="accuracy under common corruptions (mCE) and FGSM/PGD attacks",
        description="A robustness report: corruptions at severities 1-5, mCE against a "
        "baseline, and L-infinity FGSM and PGD in pixel space.",
    )
    p.add_argument("--model", required=True, metavar="REF", help="run dir or name@alias")
    p.add_argument("--baseline", metavar="REF", help="the model mCE is normalised by")
    p.add_argument("--data", help="dataset (default: the one the model was trained on)")
    add_registry_flag(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument("--images", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="corruptions' and attacks' seed")
    p.add_argument(
        "--eps", type=_comma_list(float, "numbers"), default=list(DEFAULT_EPS), help="e.g. 0.05,0.1"
    )
    p.add_argument(
        "--severities",
        type=_comma_list(int, "integers"),
        default=list(SEVERITIES),
        help="e.g. 1,3,5",
    )
    p.add_argument("--corruptions", help=f"subset of: {', '.join(CORRUPTIONS)}")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_robustness)


def _check_args(args: argparse.Namespace) -> list[str]:
    """Every flag checked before any model is loaded; returns the corruptions to run."""
    check_at_least("--images", args.images, 1)
    check_at_least("--steps", args.steps, 1)
    if not args.eps:
        raise ConfigError("--eps needs at least one value")
    for eps in args.eps:
        check_eps(eps, "--eps")
    if not args.severities:
        raise ConfigError("--severities needs at least one value")
    check_severities(args.severities)
    names = list(CORRUPTIONS)
    if args.corruptions is not None:
        names = [n.strip() for n in args.corruptions.split(",") if n.strip()]
        unknown = [n for n in names if n not in CORRUPTIONS]
        if unknown or not names:
            raise ConfigError(
                f"--corruptions {args.corruptions!r}: use names from {', '.join(CORRUPTIONS)}"
            )
    check_output_dir(args.out, what="--out")
    return names


def _torch_model(loaded: LoadedModel, device: torch.device, role: str) -> PixelSpaceModel:
    if not loaded.has_weights:
        raise CheckpointError(
            f"{role} {loaded.identity.label} is an ONNX model without torch weights; the "
            "attacks need gradients, so use its run directory or weights version"
        )
    return PixelSpaceModel(loaded.module(device), loaded.spec).eval()


def _classifier(model: PixelSpaceModel, device: torch.device) -> Classify:
    def classify(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            pixels = torch.from_numpy(images).to(device).float() / 255.0
            return model(pixels).argmax(dim=1).cpu().numpy()

    return classify


def _progress(enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )


def _load(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The models, their classifiers and the test images: every check before any work."""
    loaded = load_model_ref(args.model, registry=args.registry)
    models = {"model": _torch_model(loaded, device, "--model")}
    labels = {"model": loaded.identity.label}
    if args.baseline is not None:
        base = load_model_ref(args.baseline, registry=args.registry)
        if base.input_size != loaded.input_size:
            raise ConfigError(
                f"--baseline {base.identity.label} takes {base.input_size} inputs, the model "
                f"{loaded.input_size}; compare models of the same input"
            )
        models["baseline"] = _torch_model(base, device, "--baseline")
        labels["baseline"] = base.identity.label
    test = loaded.dataset("test", data=args.data, limit=args.images)
    check_dataset_fits(test, loaded.spec)
    return {"loaded": loaded, "models": models, "labels": labels, "test": test}


def run_robustness(args: argparse.Namespace) -> int:
    """Corrupt, attack, write the report and its plots, print the table."""
    names = _check_args(args)
    device = resolve_device(args.device)
    parts = _load(args, device)
    models, test = parts["models"], parts["test"]
    images, labels = test.images, test.labels
    count = len(labels)
    classifiers = {k: _classifier(m, device) for k, m in models.items()}
    with _progress(args.progress) as bar:
        task = bar.add_task("corruptions", total=len(names) * len(args.severities))
        results = corruption_accuracy(
            classifiers, images.numpy(), labels.numpy(), corruptions=names,
            severities=args.severities, seed=args.seed,
            on_step=lambda name, s: bar.update(task, advance=1, description=f"{name} {s}"),
        )  # fmt: skip
        attacks = _attacks(args, models["model"], images, labels, device, bar)
        ood = ood_report(parts["loaded"], images.numpy(), test.name, args.seed, device)
    report = _report(args, parts, results, attacks, count, device)
    report["ood"] = ood
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, allow_nan=False)
    atomic_write(args.out / ROBUSTNESS_JSON, lambda tmp: tmp.write_text(text + "\n"))
    plot_corruption_accuracy(results, args.out / "corruptions.png")
    clean = {"model": results["model"].clean}
    plot_attack_accuracy({"model": attacks}, args.eps, clean, args.out / "attacks.png")
    if args.json:
        print_json(report)
    else:
        _print_tables(report, results, attacks, args.eps)
    return 0


def _attacks(
    args: argparse.Namespace,
    model: PixelSpaceModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    bar: Progress,
) -> dict[str, list[float]]:
    """Accuracy per eps under FGSM and PGD, and the per-image worst case within each eps."""
    task = bar.add_task("attacks", total=2 * len(args.eps) * len(labels))
    out: dict[str, list[float]] = {"fgsm": [], "pgd": []}
    correct: dict[tuple[str, float], torch.Tensor] = {}
    for method in ("fgsm", "pgd"):
        for eps in args.eps:
            bar.update(task, description=f"{method} eps={eps:g}")
            right = attack_correct(
                model, images, labels, method, eps, steps=args.steps, seed=args.seed,
                device=device, on_batch=lambda n: bar.update(task, advance=n),
            )  # fmt: skip
            correct[(method, eps)] = right
            out[method].append(float(right.float().mean()))
    clean = clean_correct(model, images, labels, device=device)
    out["worst_case"] = worst_case_accuracy(clean, correct, list(args.eps))
    return out


def _clean_nan(value: Any) -> Any:
    """NaN (an undefined relative CE) as null: robustness.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_nan(v) for v in value]
    return value


def _report(
    args: argparse.Namespace,
    parts: dict[str, Any],
    results: dict[str, CorruptionResult],
    attacks: dict[str, list[float]],
    count: int,
    device: torch.device,
) -> dict[str, Any]:
    errors = corruption_errors(results["model"], results.get("baseline"))
    if not errors["normalised"]:
        errors["note"] = "no --baseline: CE is each corruption's mean error, unnormalised"
    report = {
        "model": parts["labels"]["model"],
        "baseline": parts["labels"].get("baseline"),
        "dataset": {"name": parts["test"].name, "split": "test", "images": count},
        "seed": args.seed,
        "device": str(device),
        "clean_accuracy": results["model"].clean,
        "corruptions": {k: r.to_dict() for k, r in results.items()},
        "corruption_errors": errors,
        "attacks": {
            "norm": "linf",
            "space": "pixels in [0, 1], before normalisation",
            "eps": list(args.eps),
            "pgd_steps": args.steps,
            "pgd_step_size": "2.5 * eps / steps",
            "pgd_random_start": True,
            "accuracy": attacks,
            "worst_case": "per image: right clean and under every attack run at this eps or "
            "below (each lies inside this eps-ball); never increases with eps",
        },
    }
    if count < 1000:
        report["warning"] = f"only {count} test images; the report is meant for >= 1000"
    return dict(_clean_nan(report))


def _print_tables(
    report: dict[str, Any],
    results: dict[str, CorruptionResult],
    attacks: dict[str, list[float]],
    eps: list[float],
) -> None:
    console = Console()
    model = results["model"]
    errors = report["corruption_errors"]
    kind = "CE (vs baseline)" if errors["normalised"] else "CE (unnormalised)"
    table = Table(title=f"{report['model']}: clean accuracy {model.clean:.1%}")
    table.add_column("corruption")
    for s in model.severities:
        table.add_column(f"sev {s}", justify="right")
    table.add_column(kind, justify="right")
    for name, accs in model.by_corruption.items():
        table.add_row(name, *(f"{a:.1%}" for a in accs), f"{errors['ce'][name]:.3f}")
    console.print(table)
    summary = f"mCE {errors['mce']:.3f}"
    if errors["normalised"]:
        rel = errors.get("relative_mce")
        summary += f", relative mCE {rel:.3f}" if rel is not None else ""
    else:
        summary += " (unnormalised: no --baseline)"
    console.print(summary)
    adv = Table(title="L-infinity attacks (pixel space)")
    adv.add_column("attack")
    for e in eps:
        adv.add_column(f"eps {e:g}", justify="right")
    for method, accs in attacks.items():
        label = "worst case within eps" if method == "worst_case" else method
        adv.add_row(label, *(f"{a:.1%}" for a in accs))
    console.print(adv)
    _print_ood(console, report["ood"])


def _print_ood(console: Console, ood: dict[str, Any]) -> None:
    if not ood.get("available"):
        console.print(f"OOD detector: unavailable: {ood.get('reason')}")
        return
    table = Table(title=f"OOD detection (served: {ood['method']}; AUROC / FPR@95%TPR)")
    table.add_column("far-OOD set")
    methods = list(next(iter(ood["sets"].values())))
    for m in methods:
        table.add_column(m, justify="right")
    for name, row in ood["sets"].items():
        table.add_row(
            name, *(f"{row[m]['auroc']:.3f} / {row[m]['fpr_at_95_tpr']:.2f}" for m in methods)
        )
    console.print(table)
    rate = ood["in_distribution_flag_rate"][ood["method"]]
    console.print(f"flagged in-distribution test images: {rate:.1%} (calibrated for 5%)")
    for name, why in ood.get("unavailable_sets", {}).items():
        console.print(f"{name}: unavailable: {why}")
