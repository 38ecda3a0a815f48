"""Where a recipe's time goes: one training step split into its phases, per epoch kind.

Builds the recipe's real ``Trainer`` on the first ``--steps`` batches of its data, warms it
up, then profiles ``--steps`` steps of each kind of epoch the recipe has (the small-crop
epochs of progressive resizing, the full-size ones) with ``torch.profiler``. Prints, for each:
milliseconds per step in augmentation, forward (model and loss), backward and the optimiser
(the loop's ``record_function`` labels), the operators that dominate, and the epoch's time
projected onto the whole training split. Then times the end of a run on the full test split
(the test evaluation with the recipe's test-time views, and the drift reference), and adds
everything up into a projected wall time beside the 10-minute budget.

The machine line comes first, precision included. Compare machine kinds on one CPU with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (an AVX2-only machine without native
bf16: ``precision = "auto"`` trains in float32 there).

    .venv/bin/python bench/epoch_profile.py configs/fashion_mnist.toml
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        .venv/bin/python bench/epoch_profile.py configs/fashion_mnist.toml --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from machine import best_time_s, describe, machine
from torch.profiler import ProfilerActivity, profile

from resnetkit.config import TrainConfig, from_dict, load_toml
from resnetkit.data import load_dataset
from resnetkit.errors import ResNetKitError
from resnetkit.evaluate import autocast, evaluate_model, precision_name
from resnetkit.models import profile as model_profile
from resnetkit.train.loop import PHASES, Trainer, drift_reference
from resnetkit.train.setup import small_crop_epochs

#: Operators grouped the way they are read: where the convolutions go, and the rest.
OPERATOR_GROUPS = {
    "aten::convolution_backward": "conv backward",
    "aten::mkldnn_convolution": "conv forward",
    "aten::_convolution": "conv forward",
    "aten::native_batch_norm": "batch norm",
    "aten::native_batch_norm_backward": "batch norm",
    "aten::max_pool2d_with_indices": "max-pool",
    "aten::max_pool2d_with_indices_backward": "max-pool",
}


def epoch_kinds(cfg: TrainConfig, full: int) -> list[tuple[str, int, float, int]]:
    """(name, a representative epoch index, how many epochs, image side) for each kind of
    epoch; ``full`` is the images' side. A hard-examples epoch (a share of the images at
    full size) counts as that share of a full-size epoch."""
    small = small_crop_epochs(cfg)
    kinds: list[tuple[str, int, float, int]] = []
    if small and cfg.augment.small_crop:
        side = cfg.augment.small_crop
        kinds.append((f"{side}x{side} crops", 0, small, side))
    if cfg.epochs > small:
        hard = cfg.hard_examples
        share = hard.fraction + hard.random_fraction
        count = cfg.epochs - small - hard.epochs * (1 - share)
        kinds.append(("full size", cfg.epochs - 1, count, full))
    return kinds


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype | None, repeats: int = 3) -> float:
    """Best GFLOP/s of a 2048^3 matmul at the run's precision: what the CPU can do at best."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    with torch.inference_mode(), autocast(device, dtype):
        return 2 * 2048**3 / best_time_s(lambda: torch.mm(a, b), repeats) / 1e9


def profile_steps(trainer: Trainer, epoch: int, steps: int) -> dict[str, Any]:
    """Milliseconds per step in each phase and operator group, over ``steps`` steps."""
    trainer.epoch, trainer.step = epoch, 0
    trainer._train_epoch()  # warm-up: oneDNN picks and caches its kernels for these shapes
    trainer.epoch, trainer.step = epoch, 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        trainer._train_epoch()
        wall = time.perf_counter() - start
    phases: dict[str, float] = defaultdict(float)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key in PHASES:
            phases[event.key.removeprefix("resnetkit.")] += event.cpu_time_total / 1000
        group = OPERATOR_GROUPS.get(event.key)
        if group:
            groups[group] += event.self_cpu_time_total / 1000
    per_step = {k: v / steps for k, v in phases.items()}
    per_step["other (batch fetch, bookkeeping)"] = max(
        0.0, 1000 * wall / steps - sum(per_step.values())
    )
    return {
        "ms_per_step": 1000 * wall / steps,
        "phases_ms": per_step,
        "operators_ms": {k: v / steps for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
    }


def end_of_run(trainer: Trainer, cfg: TrainConfig) -> dict[str, float]:
    """Seconds for the test evaluation (with the recipe's views) and the drift reference."""
    model = trainer.model
    test = load_dataset(cfg.data.name, "test", data_dir=cfg.data.data_dir)
    start = time.perf_counter()
    evaluate_model(
        model,
        test,
        trainer.data.spec,
        tta_flip=cfg.tta_flip,
        tta_shift=cfg.tta_shift,
        precision=cfg.precision,
        progress=False,
    )
    evaluation = time.perf_counter() - start
    start = time.perf_counter()
    drift_reference(model, trainer.data)
    return {"test evaluation": evaluation, "drift reference": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--steps", type=int, default=30, help="steps profiled per epoch kind")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="the recipe's wall-time goal (Fashion-MNIST 600, quickstart 180, "
                        "MNIST 300)")  # fmt: skip
    args = parser.parse_args()
    if args.steps < 2:
        sys.exit("error: --steps must be at least 2")
    if args.budget_s <= 0:
        sys.exit("error: --budget-s must be positive")
    if args.json is not None and not args.json.parent.is_dir():
        sys.exit(f"error: --json: folder {args.json.parent} does not exist")
    try:  # a missing recipe or dataset, a bad setting: one line, not a traceback
        cfg = from_dict(TrainConfig, load_toml(args.recipe))
        report, full_steps = profile_recipe(cfg, args)
    except (OSError, ResNetKitError) as exc:
        sys.exit(f"error: {exc}")
    print_report(report, cfg, full_steps, args.budget_s)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def profile_recipe(cfg: TrainConfig, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The report of :func:`main`, and the recipe's steps per full epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        # The first --steps batches only: a profile, not a run (no validation split).
        limited = dataclasses.replace(
            cfg,
            progress=False,
            data=dataclasses.replace(cfg.data, limit=args.steps * cfg.batch_size, val_fraction=0.0),
        )
        trainer = Trainer(limited, Path(tmp) / "run")
        info = machine(f"{precision_name(trainer.amp_dtype)} (precision={cfg.precision!r})")
        print(describe(info), flush=True)
        train_size = len(load_dataset(cfg.data.name, "train", data_dir=cfg.data.data_dir))
        full_steps = int(train_size * (1 - cfg.data.val_fraction)) // cfg.batch_size
        report: dict[str, Any] = {"machine": info, "recipe": str(args.recipe), "epochs": {}}
        projected = 0.0
        channels, full_side = trainer.data.spec.input_size[0], trainer.data.spec.input_size[-1]
        for name, epoch, count, side in epoch_kinds(cfg, full_side):
            result = profile_steps(trainer, epoch, args.steps)
            result["epochs"] = count
            # A training step costs about 3x the forward pass (forward, input and weight grads).
            macs = model_profile(trainer.model, (channels, side, side)).macs
            flops = 2 * 3 * macs * cfg.batch_size
            result["achieved_gflops"] = flops / (result["ms_per_step"] / 1000) / 1e9
            result["projected_epoch_s"] = result["ms_per_step"] * full_steps / 1000
            projected += count * result["projected_epoch_s"]
            report["epochs"][name] = result
        report["end_of_run_s"] = end_of_run(trainer, cfg)
        report["matmul_peak_gflops"] = matmul_peak_gflops(trainer.device, trainer.amp_dtype)
    projected += sum(report["end_of_run_s"].values())
    report["projected_wall_s"] = projected
    return report, full_steps


def print_report(
    report: dict[str, Any], cfg: TrainConfig, full_steps: int, budget_s: float
) -> None:
    """The phase table of each epoch kind, the end of a run, the projected total."""
    threads = torch.get_num_threads()
    print(f"\n{report['recipe']}: {cfg.model.arch}, batch {cfg.batch_size}, {threads} threads, "
          f"{full_steps} steps per epoch")  # fmt: skip
    for name, result in report["epochs"].items():
        total = result["ms_per_step"]
        print(f"\n{name}: {total:.1f} ms per step, {result['projected_epoch_s']:.1f} s per epoch "
              f"x {result['epochs']:g} epochs; {result['achieved_gflops']:.0f} GFLOP/s "
              f"({result['achieved_gflops'] / report['matmul_peak_gflops']:.0%} of the "
              f"matmul peak)")  # fmt: skip
        print(f"  {'phase':<36}{'ms/step':>10}{'share':>8}")
        for phase, ms in result["phases_ms"].items():
            print(f"  {phase:<36}{ms:>10.1f}{ms / total:>8.0%}")
        print(f"  {'operators (self time, in the phases)':<36}")
        for group, ms in result["operators_ms"].items():
            print(f"    {group:<34}{ms:>10.1f}{ms / total:>8.0%}")
    print(f"\nmatmul peak at this precision (2048^3): {report['matmul_peak_gflops']:.0f} GFLOP/s")
    print("end of a run:")
    for part, seconds in report["end_of_run_s"].items():
        print(f"  {part:<36}{seconds:>9.1f} s")
    wall = report["projected_wall_s"]
    verdict = "within" if wall <= budget_s else f"{wall - budget_s:.0f} s over"
    print(f"\nprojected training + end of run: {wall:.0f} s ({verdict} the {budget_s:.0f} s "
          f"budget; imports and data loading come on top, about 5-10 s)")  # fmt: skip


if __name__ == "__main__":
    main()
