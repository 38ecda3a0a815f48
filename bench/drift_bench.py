"""Drift detection on real shifts: detection rates per shift and window size, beside a baseline.

A trained model (``--run RUN_DIR``, or a small resnet8 trained here on Fashion-MNIST) turns
windows of images into embeddings and softmax outputs (fp32, eval mode, the model's own
preprocessing), and :class:`~resnetkit.monitor.drift.DriftReference` built from the run's
``drift_reference.safetensors`` judges each window. Windows of 50, 100, 200 and 500 images,
100 of each (seeded), come from:

    none           Fashion-MNIST test images: every flag is a false positive
    mnist          MNIST digits
    brightness     Fashion-MNIST test images at brightness x0.6
    noise          ... with Gaussian noise, sigma 0.1 on [0, 1] pixels, clipped
    rotation       ... rotated by 15 degrees
    three_classes  ... of only 3 of the 10 classes (label shift)

The baseline, measured on the same windows: the naive monitor, one two-sample KS test on the
maximum softmax probability at alpha 0.05. The goals: false positives <= 5% at every window
size; MNIST flagged in >= 99% of windows of 100; each of brightness, noise, rotation and
three_classes in >= 90% of windows of 200.

    .venv/bin/python bench/drift_bench.py --out runs/drift-bench             # trains (minutes)
    .venv/bin/python bench/drift_bench.py --run runs/quickstart-... --out runs/drift-bench
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from machine import describe, machine
from safetensors.numpy import load_file

from resnetkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from resnetkit.contract import DRIFT_REFERENCE, MODEL_JSON, read_summary, write_json
from resnetkit.data import load_dataset
from resnetkit.errors import ConfigError
from resnetkit.evaluate import predict_embeddings
from resnetkit.fileio import check_output_dir
from resnetkit.models import load_model
from resnetkit.monitor.drift import DriftReference, DriftReport, ks_confidence
from resnetkit.monitor.drift_plots import plot_detection_heatmap, plot_drift
from resnetkit.train import train

SHIFTS = ("none", "mnist", "brightness", "noise", "rotation", "three_classes")
WINDOW_SIZES = (50, 100, 200, 500)
THREE_CLASSES = (0, 1, 2)  # T-shirt/top, Trouser, Pullover
BASELINE = "KS on max softmax probability alone, alpha 0.05"


@dataclass(frozen=True)
class Goal:
    """A detection-rate target for one cell: ``rate <= limit`` or ``rate >= limit``."""

    shift: str
    size: int
    limit: float
    at_most: bool

    def met(self, rate: float) -> bool:
        return rate <= self.limit if self.at_most else rate >= self.limit

    def text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {100 * self.limit:.0f}%"


GOALS = (
    *(Goal("none", n, 0.05, True) for n in WINDOW_SIZES),
    Goal("mnist", 100, 0.99, False),
    *(Goal(s, 200, 0.90, False) for s in ("brightness", "noise", "rotation", "three_classes")),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train one)")
    parser.add_argument("--out", type=Path, default=Path("runs/drift-bench"), help="output folder")
    parser.add_argument("--windows", type=int, default=100, help="windows per shift and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(WINDOW_SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs when training here")
    parser.add_argument("--train-limit", type=int, default=30000, help="training images")
    args = parser.parse_args(argv)
    # Every argument is checked before the first expensive step.
    if args.windows < 1 or min(args.sizes) < 20 or args.epochs < 1 or args.train_limit < 1000:
        raise ConfigError("--windows and --epochs >= 1, --sizes >= 20, --train-limit >= 1000")
    if args.run is not None and not (args.run / DRIFT_REFERENCE).is_file():
        raise ConfigError(f"--run {args.run} holds no {DRIFT_REFERENCE}; train it with resnetkit")
    check_output_dir(args.out, what="--out")
    return args


def train_small_model(out: Path, epochs: int, limit: int) -> Path:
    """A resnet8 on Fashion-MNIST (fp32: bf16 autocast is slow on CPUs without native bf16)."""
    run_dir = out / "run"
    if (run_dir / MODEL_JSON).is_file() and (run_dir / DRIFT_REFERENCE).is_file():
        print(f"reusing the model trained earlier in {run_dir}")
        return run_dir
    cfg = TrainConfig(
        model=ModelConfig(arch="resnet8"),
        data=DataConfig(name="fashion-mnist", val_fraction=0.1, limit=limit, test_limit=2000),
        optim=OptimConfig(lr=0.2, schedule="linear", warmup_epochs=0.5),
        epochs=epochs,
        precision="fp32",
        channels_last=False,
        progress=False,
    )
    started = time.perf_counter()
    result = train(cfg, run_dir)
    print(
        f"trained resnet8 in {time.perf_counter() - started:.0f} s: val acc {result.val_accuracy}"
    )
    return run_dir


# --- the shifted image sets, as float pixels in [0, 1] ---------------------------------------


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch ``(N, C, H, W)`` about its centre (bilinear, black corners)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def shifted_sets(seed: int) -> dict[str, torch.Tensor]:
    test = load_dataset("fashion-mnist", "test")
    pixels = test.images.float() / 255.0  # (N, 1, 28, 28)
    noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(seed))
    subset = torch.isin(test.labels, torch.tensor(THREE_CLASSES))
    return {
        "none": pixels,
        "mnist": load_dataset("mnist", "test").images.float() / 255.0,
        "brightness": pixels * 0.6,
        "noise": (pixels + 0.1 * noise).clamp(0.0, 1.0),
        "rotation": rotate(pixels, 15.0),
        "three_classes": pixels[subset],
    }


# --- windows ------------------------------------------------------------------------------


@dataclass
class Cell:
    """Counts over the windows of one shift and size."""

    ours: int = 0
    baseline: int = 0
    windows: int = 0
    evaluate_s: float = 0.0
    detectors: dict[str, int] | None = None

    def add(self, report: DriftReport, baseline: bool, seconds: float) -> None:
        self.windows += 1
        self.ours += report.drift_detected
        self.baseline += baseline
        self.evaluate_s += seconds
        self.detectors = self.detectors or {r.name: 0 for r in report.results}
        for r in report.results:
            self.detectors[r.name] += r.drift

    def rate(self, which: str = "ours") -> float:
        return getattr(self, which) / max(1, self.windows)


Outputs = tuple[np.ndarray, np.ndarray]


def run_cell(
    reference: DriftReference,
    outputs: Outputs,
    reference_probabilities: np.ndarray,
    size: int,
    windows: int,
    rng: np.random.Generator,
) -> Cell:
    embeddings, probabilities = outputs
    cell = Cell()
    for k in range(windows):
        idx = rng.choice(len(embeddings), size, replace=False)
        started = time.perf_counter()
        report = reference.evaluate(embeddings[idx], probabilities[idx], seed=k)
        seconds = time.perf_counter() - started
        naive = ks_confidence(reference_probabilities, probabilities[idx], alpha=0.05).drift
        cell.add(report, naive, seconds)
    return cell


# --- the report ---------------------------------------------------------------------------


def _ratio(ours: float, baseline: float) -> str:
    if baseline == 0:
        return "  -  " if ours == 0 else " inf "
    return f"{ours / baseline:4.2f}x"


def _mean_ms(cells: dict[str, dict[int, Cell]], size: int) -> float:
    row = [r[size] for r in cells.values()]
    return 1000 * sum(c.evaluate_s for c in row) / max(1, sum(c.windows for c in row))


def print_table(cells: dict[str, dict[int, Cell]], sizes: list[int]) -> None:
    print(
        f"\nfraction of windows flagged: ours (4 detectors, Holm at 0.05) | baseline "
        f"({BASELINE}) | ours/baseline"
    )
    print(f"{'shift':<14}" + "".join(f"{f'n={n}':>27}" for n in sizes))
    for shift, row in cells.items():
        label = "none (FP)" if shift == "none" else shift
        parts = [
            f"{100 * c.rate():5.0f}% |{100 * c.rate('baseline'):4.0f}% | "
            f"{_ratio(c.rate(), c.rate('baseline'))}"
            for c in (row[n] for n in sizes)
        ]
        print(f"{label:<14}" + "".join(f"{p:>27}" for p in parts))
    print("\nwindows each detector flagged (after Holm), n = " + "/".join(map(str, sizes)))
    for shift, row in cells.items():
        names = list(row[sizes[0]].detectors or {})
        text = "  ".join(
            f"{name} " + "/".join(f"{(row[n].detectors or {})[name]}" for n in sizes)
            for name in names
        )
        print(f"  {shift:<14}{text}")
    times = "  ".join(f"n={n}: {_mean_ms(cells, n):.0f} ms" for n in sizes)
    print(f"\nmean evaluate() time per window: {times}")


def check_goals(cells: dict[str, dict[int, Cell]]) -> list[dict[str, Any]]:
    print("\ngoals")
    results = []
    for goal in GOALS:
        if goal.shift not in cells or goal.size not in cells[goal.shift]:
            print(f"  {goal.shift:<14} n={goal.size:<4} {goal.text():>7}: not measured")
            continue
        rate = cells[goal.shift][goal.size].rate()
        met = goal.met(rate)
        base = cells[goal.shift][goal.size].rate("baseline")
        print(
            f"  {goal.shift:<14} n={goal.size:<4} {goal.text():>7}: ours {100 * rate:5.1f}% "
            f"{'MET' if met else 'NOT MET':<8} (baseline {100 * base:5.1f}%)"
        )
        results.append(
            {
                "shift": goal.shift,
                "size": goal.size,
                "goal": goal.text(),
                "rate": rate,
                "baseline_rate": base,
                "met": met,
            }
        )
    return results


def write_outputs(
    out: Path, cells: dict[str, dict[int, Cell]], sizes: list[int], meta: dict[str, Any]
) -> None:
    shifts = list(cells)
    ours = [[cells[s][n].rate() for n in sizes] for s in shifts]
    base = [[cells[s][n].rate("baseline") for n in sizes] for s in shifts]
    plot_detection_heatmap(
        ours,
        shifts,
        sizes,
        out / "detection_heatmap.png",
        title="Drift detection rate (ours: 4 detectors, Holm at 0.05)",
    )
    plot_detection_heatmap(
        base, shifts, sizes, out / "baseline_heatmap.png", title=f"Baseline: {BASELINE}"
    )
    rates = {
        s: {
            str(n): {
                "ours": cells[s][n].rate(),
                "baseline": cells[s][n].rate("baseline"),
                "detectors": {
                    k: v / cells[s][n].windows for k, v in (cells[s][n].detectors or {}).items()
                },
                "mean_evaluate_ms": 1000 * cells[s][n].evaluate_s / cells[s][n].windows,
            }
            for n in sizes
        }
        for s in shifts
    }
    write_json(out / "drift_rates.json", {**meta, "window_sizes": sizes, "rates": rates})
    print(f"\nwrote {out / 'detection_heatmap.png'}, {out / 'drift_rates.json'}")


def example_plots(
    out: Path, reference: DriftReference, outputs: dict[str, Outputs], labels: list[str]
) -> None:
    """One picture per shift: a window of 200 against the reference."""
    rng = np.random.default_rng(0)
    for shift, (embeddings, probabilities) in outputs.items():
        idx = rng.choice(len(embeddings), 200, replace=False)
        report = reference.evaluate(embeddings[idx], probabilities[idx])
        plot_drift(
            reference,
            embeddings[idx],
            probabilities[idx],
            report,
            out / f"drift_{shift}.png",
            class_names=labels,
        )


def _reference_probabilities(run_dir: Path) -> np.ndarray:
    return np.asarray(load_file(str(run_dir / DRIFT_REFERENCE))["probabilities"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(describe(machine("float32 embeddings")), flush=True)
    torch.manual_seed(args.seed)
    run_dir = args.run or train_small_model(args.out, args.epochs, args.train_limit)
    model, card = load_model(run_dir)
    spec = card.spec(str(run_dir))
    reference = DriftReference.from_file(run_dir)
    print(f"model {card.arch} from {run_dir}; reference {reference}")
    started = time.perf_counter()
    outputs: dict[str, Outputs] = {}
    for shift, images in shifted_sets(args.seed).items():
        embeddings, probabilities = predict_embeddings(model, images, spec, precision="fp32")
        outputs[shift] = (embeddings.numpy(), probabilities.numpy())
    print(
        f"embedded {sum(len(e) for e, _ in outputs.values())} images in "
        f"{time.perf_counter() - started:.0f} s"
    )
    ref_probabilities = _reference_probabilities(run_dir)
    cells: dict[str, dict[int, Cell]] = {}
    for i, (shift, pair) in enumerate(outputs.items()):
        cells[shift] = {
            n: run_cell(
                reference,
                pair,
                ref_probabilities,
                n,
                args.windows,
                np.random.default_rng([args.seed, i, n]),
            )
            for n in args.sizes
        }
    print_table(cells, args.sizes)
    goals = check_goals(cells)
    meta = {
        "run_dir": str(run_dir),
        "arch": card.arch,
        "windows": args.windows,
        "seed": args.seed,
        "baseline": BASELINE,
        "goals": goals,
        "summary": read_summary(run_dir),
        "reference": repr(reference),
    }
    write_outputs(args.out, cells, args.sizes, meta)
    example_plots(args.out, reference, outputs, card.labels)


if __name__ == "__main__":
    main()
