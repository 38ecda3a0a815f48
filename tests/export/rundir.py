"""A real, briefly trained run directory shared by the export, compress and CLI tests."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetkit.data import PreprocessingSpec, compute_preprocessing, load_dataset, normalize
from resnetkit.models import create_model, save_model

ARCH_KWARGS = {"num_classes": 10, "in_chans": 1}
TRAIN_IMAGES = 2000


@functools.cache
def trained_run_dir(base: str, arch: str = "resnet8") -> Path:
    """Train ``arch`` for one epoch on 2000 Fashion-MNIST images and save a run directory.

    Cached per session (``base`` is pytest's base temp folder), so every test module that
    needs a trained model shares one few-second training run.
    """
    torch.manual_seed(0)
    train = load_dataset("fashion-mnist", "train", limit=TRAIN_IMAGES)
    spec = compute_preprocessing(train)
    model = create_model(arch, **ARCH_KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(2):
        for idx in torch.randperm(len(train)).split(64):
            loss = F.cross_entropy(model(normalize(train.images[idx], spec)), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = Path(base) / f"run-{arch}"
    save_model(
        model.eval(),
        out,
        arch=arch,
        kwargs=ARCH_KWARGS,
        labels=list(train.classes),
        preprocessing=spec.to_dict(),
    )
    return out


def real_test_images(spec: PreprocessingSpec, limit: int = 128) -> torch.Tensor:
    """Normalised real Fashion-MNIST test images ``(limit, 1, 28, 28)``."""
    return normalize(load_dataset("fashion-mnist", "test", limit=limit).images, spec)
