"""Time to accuracy: a resnetkit recipe beside a plain single-file PyTorch script.

For each seed, runs ``resnetkit train --config RECIPE`` (wall time from start to the test
accuracy, data loading and evaluation included) and, with ``--baseline``, the plain script
the training issue measured: ResNet-20 (or ``--baseline-arch``), the whole dataset as uint8
tensors, crop + flip on whole batches, the recipe's precision (bf16 autocast where the CPU
has native bf16, float32 elsewhere) + channels_last, batch 256, SGD
Nesterov, warmup then linear decay, label smoothing 0.1, no EMA, no flip at test time, for
``--baseline-epochs`` (default: the recipe's). Prints the machine first (CPU, cores,
instruction sets, the precision used, versions), then both as mean ± std, with the ratio.

An AVX2-only machine without native bf16 is emulated on a newer CPU with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` in the environment: ``precision = "auto"``
then trains in float32, as it would there, and the machine line says so. The emulation gives
the real machine's accuracies but runs at the newer CPU's clock and caches: on the recipes it
was 16-22% faster than the real AVX2-only machine (docs/recipes.md).

    .venv/bin/python bench/time_to_accuracy.py configs/fashion_mnist_fast.toml --baseline
    .venv/bin/python bench/time_to_accuracy.py configs/mnist.toml --seeds 0 --baseline
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import describe, machine

from resnetkit.config import TrainConfig, from_dict, load_toml
from resnetkit.data import load_dataset
from resnetkit.errors import ResNetKitError
from resnetkit.evaluate import precision_name, resolve_device, resolve_precision
from resnetkit.models import create_model


def run_recipe(recipe: Path, seed: int, workdir: Path) -> tuple[float, float, float]:
    """``resnetkit train`` in a subprocess; returns (test accuracy, wall s, training s).

    Wall time runs from the command's start to its exit: imports, data loading, training,
    the test evaluation and the run directory's files. Training seconds are the loop's own
    clock (``summary.json``); the rest is the fixed cost of a run.
    """
    out = workdir / f"seed{seed}"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "resnetkit.cli.main", "train", "--config", str(recipe)]
    cmd += ["--seed", str(seed), "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    if done.returncode != 0:  # resnetkit train has printed its one-line error above
        raise SystemExit(f"error: resnetkit train failed for seed {seed} (exit {done.returncode})")
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return summary["test_accuracy"], wall, summary["train_seconds"]


def plain_script(
    cfg: TrainConfig, seed: int, arch: str, epochs: int, amp: torch.dtype | None
) -> tuple[float, float]:
    """The baseline: everything written out by hand, as a single-file script would."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    train = load_dataset(cfg.data.name, "train")
    test = load_dataset(cfg.data.name, "test")
    x_all, y_all = train.images, train.labels
    mean, std = x_all.float().mean() / 255, x_all.float().std() / 255
    model = create_model(arch, in_chans=1, num_classes=10)
    model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    opt = torch.optim.SGD(
        model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay
    )
    steps_per_epoch = len(x_all) // cfg.batch_size
    total, warmup = epochs * steps_per_epoch, int(o.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - (step - warmup) / max(1, total - warmup)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    pad, flip_ok = cfg.augment.crop_padding, cfg.augment.hflip and train.allows_hflip
    for _ in range(epochs):
        perm = torch.randperm(len(x_all))
        for step in range(steps_per_epoch):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            if pad:
                padded = F.pad(x, (pad, pad, pad, pad))
                dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
                x = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
            if flip_ok:
                x = torch.where((torch.rand(len(x)) < 0.5)[:, None, None, None], x.flip(3), x)
            x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=o.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test), 1000):
            x = (test.images[i : i + 1000].float() / 255 - mean) / std
            correct += int((model(x).argmax(1) == test.labels[i : i + 1000]).sum())
    return correct / len(test), time.perf_counter() - start


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", action="store_true", help="also run the plain script")
    parser.add_argument("--baseline-arch", default="resnet20", help="the plain script's model")
    parser.add_argument("--baseline-epochs", type=int, help="default: the recipe's epochs")
    parser.add_argument("--out", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    try:
        cfg = from_dict(TrainConfig, load_toml(args.recipe))
        device = resolve_device(cfg.device)
        amp = resolve_precision(cfg.precision, device)
    except ResNetKitError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(describe(machine(f"{precision_name(amp)} (precision={cfg.precision!r} on {device})")),
          flush=True)  # fmt: skip
    base_epochs = args.baseline_epochs or cfg.epochs
    ours: list[tuple[float, float, float]] = []
    base: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.out or Path(tmp)
        for seed in args.seeds:
            ours.append(run_recipe(args.recipe, seed, workdir))
            acc, wall, trained = ours[-1]
            print(f"seed {seed}: {100 * acc:.2f}% in {wall:.1f} s ({trained:.1f} s training)",
                  flush=True)  # fmt: skip
            if args.baseline:
                base.append(plain_script(cfg, seed, args.baseline_arch, base_epochs, amp))
    print(f"\n{args.recipe} ({cfg.model.arch}, {cfg.epochs} epochs), seeds {args.seeds}")
    print(f"{'':<26}{'test accuracy %':>20}{'wall s':>20}{'training s':>16}")
    accs, walls = [a for a, _, _ in ours], [w for _, w, _ in ours]
    trained = [t for _, _, t in ours]
    name = f"resnetkit ({cfg.model.arch})"
    print(f"{name:<26}{_fmt(accs, 100):>20}{_fmt(walls, 1, 1):>20}{_fmt(trained, 1, 1):>16}")
    for seed, (acc, wall, t) in zip(args.seeds, ours, strict=True):
        print(f"{f'  seed {seed}':<26}{100 * acc:>20.2f}{wall:>20.1f}{t:>16.1f}")
    print(f"{'  worst / slowest':<26}{100 * min(accs):>20.2f}{max(walls):>20.1f}")
    if base:
        plain = f"plain {args.baseline_arch}, {base_epochs} ep"
        print(f"{plain:<26}{_fmt([a for a, _ in base], 100):>20}"
              f"{_fmt([w for _, w in base], 1, 1):>20}")  # fmt: skip
        ratio = statistics.mean(w for _, w in base) / statistics.mean(walls)
        gain = 100 * (statistics.mean(accs) - statistics.mean(a for a, _ in base))
        print(f"{'ours vs plain':<26}{f'{gain:+.2f} points':>20}{f'{ratio:.2f}x speed':>20}")


if __name__ == "__main__":
    main()
