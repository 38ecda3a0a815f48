"""Time to accuracy: a resnetkit recipe beside a plain single-file PyTorch script.

For each seed, runs ``resnetkit train --config RECIPE`` (wall time from start to the test
accuracy, data loading and evaluation included) and, with ``--baseline``, the plain script
the training issue measured: ResNet-20 (or ``--baseline-arch``), the whole dataset as uint8
tensors, crop + flip on whole batches, bf16 autocast + channels_last, batch 256, SGD
Nesterov, warmup then linear decay, label smoothing 0.1, no EMA, no flip at test time, for
``--baseline-epochs`` (default: the recipe's). Prints both as mean ± std, with the ratio.

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

from resnetkit.config import TrainConfig, from_dict, load_toml
from resnetkit.data import load_dataset
from resnetkit.models import create_model


def run_recipe(recipe: Path, seed: int, workdir: Path) -> tuple[float, float]:
    """``resnetkit train`` in a subprocess; returns (test accuracy, wall seconds)."""
    out = workdir / f"seed{seed}"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "resnetkit.cli.main", "train", "--config", str(recipe)]
    cmd += ["--seed", str(seed), "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return summary["test_accuracy"], wall


def plain_script(cfg: TrainConfig, seed: int, arch: str, epochs: int) -> tuple[float, float]:
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
            with torch.autocast("cpu", dtype=torch.bfloat16):
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
    args = parser.parse_args()
    cfg = from_dict(TrainConfig, load_toml(args.recipe))
    base_epochs = args.baseline_epochs or cfg.epochs
    ours, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ours.append(run_recipe(args.recipe, seed, Path(tmp)))
            if args.baseline:
                base.append(plain_script(cfg, seed, args.baseline_arch, base_epochs))
    print(f"\n{args.recipe} ({cfg.model.arch}, {cfg.epochs} epochs), seeds {args.seeds}")
    print(f"{'':<26}{'test accuracy %':>20}{'wall s':>20}")
    plain = f"plain {args.baseline_arch}, {base_epochs} ep"
    rows = [(f"resnetkit ({cfg.model.arch})", ours)] + ([(plain, base)] if base else [])
    for name, runs in rows:
        accs, walls = [a for a, _ in runs], [w for _, w in runs]
        print(f"{name:<26}{_fmt(accs, 100):>20}{_fmt(walls, 1, 1):>20}")
        for seed, (acc, wall) in zip(args.seeds, runs, strict=True):
            print(f"{f'  seed {seed}':<26}{100 * acc:>20.2f}{wall:>20.1f}")
    if base:
        ratio = statistics.mean(w for _, w in base) / statistics.mean(w for _, w in ours)
        gain = 100 * (statistics.mean(a for a, _ in ours) - statistics.mean(a for a, _ in base))
        print(f"{'ours vs plain':<26}{f'{gain:+.2f} points':>20}{f'{ratio:.2f}x speed':>20}")


if __name__ == "__main__":
    main()
