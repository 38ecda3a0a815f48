"""Training throughput: the resnetkit loop beside a minimal hand-written PyTorch loop.

Both train the same model on the same real Fashion-MNIST images (uint8 in memory), with the
same batch, precision, augmentation (random crop with padding + horizontal flip on whole
batches), optimiser (SGD Nesterov) and label smoothing. They run alternately in one process
after a warm-up, and the table reports the median images/s of each and their ratio.

    .venv/bin/python bench/train_bench.py                 # resnet20, batch 256, bf16
    .venv/bin/python bench/train_bench.py --precision fp32 --steps 40
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import describe, machine

from resnetkit.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig
from resnetkit.data import load_dataset
from resnetkit.models import create_model
from resnetkit.train.loop import Trainer


def minimal_loop(
    images: torch.Tensor, labels: torch.Tensor, arch: str, batch: int, steps: int, bf16: bool
) -> float:
    """The hand-written baseline; returns images/s over ``steps`` steps."""
    torch.manual_seed(0)
    model = create_model(arch, in_chans=1, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    mean, std = images.float().mean() / 255, images.float().std() / 255
    perm = torch.randperm(images.shape[0])
    start = time.perf_counter()
    for step in range(steps):
        idx = perm[step * batch : (step + 1) * batch]
        x, y = images[idx], labels[idx]
        # Random crop with 2-pixel padding and a flip for the whole batch, as tensors.
        padded = F.pad(x, (2, 2, 2, 2))
        dx, dy = torch.randint(0, 5, (2,)).tolist()
        x = padded[:, :, dy : dy + 28, dx : dx + 28]
        flip = torch.rand(x.shape[0]) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def resnetkit_loop(cfg: TrainConfig, workdir: Path, run: int) -> float:
    """One epoch of the real loop (setup excluded); returns images/s."""
    trainer = Trainer(cfg, workdir / f"run{run}")
    start = time.perf_counter()
    trainer._train_epoch()
    return trainer.images_seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    print(describe(machine(args.precision)), flush=True)

    n = args.steps * args.batch_size
    train = load_dataset("fashion-mnist", "train", limit=n)
    cfg = TrainConfig(
        model=ModelConfig(args.model),
        data=DataConfig(limit=n, val_fraction=0.0),
        augment=AugmentConfig(crop_padding=2, hflip=True),
        optim=OptimConfig(lr=0.1, warmup_epochs=0.0),
        epochs=1,
        batch_size=args.batch_size,
        precision=args.precision,
        progress=False,
    )
    bf16 = args.precision == "bf16"
    ours, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        warm = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, limit=args.batch_size * 5)
        )
        resnetkit_loop(warm, Path(tmp), -1)
        minimal_loop(train.images, train.labels, args.model, args.batch_size, 5, bf16)
        for r in range(args.repeats):
            # Alternate which loop goes first, so drift in clock speed favours neither.
            for which in ("minimal", "ours") if r % 2 == 0 else ("ours", "minimal"):
                if which == "ours":
                    ours.append(resnetkit_loop(cfg, Path(tmp), r))
                    continue
                images, labels = train.images, train.labels
                base.append(
                    minimal_loop(images, labels, args.model, args.batch_size, args.steps, bf16)
                )
    b, o = statistics.median(base), statistics.median(ours)
    pair_ratios = [x / y for x, y in zip(ours, base, strict=True)]
    threads = torch.get_num_threads()
    print(f"\n{args.model}, batch {args.batch_size}, {args.precision}, ", end="")
    print(f"{args.steps} steps x {args.repeats} runs, {threads} threads")
    print(f"{'loop':<28}{'images/s (median)':>20}   runs")
    print(f"{'minimal PyTorch loop':<28}{b:>20,.0f}   {' '.join(f'{x:,.0f}' for x in base)}")
    print(f"{'resnetkit Trainer':<28}{o:>20,.0f}   {' '.join(f'{x:,.0f}' for x in ours)}")
    print(f"{'ratio of medians':<28}{o / b:>20.3f}")
    ratios = " ".join(f"{x:.3f}" for x in pair_ratios)
    print(f"{'median ratio of pairs':<28}{statistics.median(pair_ratios):>20.3f}   {ratios}")


if __name__ == "__main__":
    main()
