"""A real, briefly trained run directory shared by the export, compress and CLI tests."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit.contract import write_summary
from resnetkit.data import PreprocessingSpec, compute_preprocessing, load_dataset, normalize
from resnetkit.models import create_model, save_model

ARCH_KWARGS = {"num_classes": 10, "in_chans": 1}
TRAIN_IMAGES = 6000


@functools.cache
def trained_run_dir(
    base: str, arch: str = "resnet8", *, seed: int = 0, shuffle_labels: bool = False
) -> Path:
    """Train ``arch`` for two epochs on 6000 Fashion-MNIST images and save a run directory.

    About 80% test accuracy: trained enough that int8 quantization and ONNX parity are
    judged on a real model, not on one whose logits are all near zero.

    Cached per session (``base`` is pytest's base temp folder), so every test module that
    needs a trained model shares one few-second training run.
    """
    torch.manual_seed(seed)
    train = load_dataset("fashion-mnist", "train", limit=TRAIN_IMAGES)
    labels = train.labels[torch.randperm(len(train))] if shuffle_labels else train.labels
    spec = compute_preprocessing(train)
    model = create_model(arch, **ARCH_KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(2):
        for idx in torch.randperm(len(train)).split(64):
            loss = F.cross_entropy(model(normalize(train.images[idx], spec)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    suffix = ("" if seed == 0 else f"-seed{seed}") + ("-shuffled" if shuffle_labels else "")
    out = Path(base) / f"run-{arch}{suffix}"
    save_model(
        model.eval(),
        out,
        arch=arch,
        kwargs=ARCH_KWARGS,
        labels=list(train.classes),
        preprocessing=spec,
    )
    # As training writes it: what the model learned from, so commands find their data.
    write_summary(out, {"dataset": {"name": "fashion-mnist", "train_samples": len(train)}})
    return out


def real_test_images(spec: PreprocessingSpec, limit: int = 128) -> torch.Tensor:
    """Normalised real Fashion-MNIST test images ``(limit, 1, 28, 28)``."""
    return normalize(load_dataset("fashion-mnist", "test", limit=limit).images, spec)
