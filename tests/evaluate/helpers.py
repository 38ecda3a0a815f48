"""Shared by the evaluation tests: a small ResNet trained briefly on real Fashion-MNIST.

The training loop here is a deliberately plain PyTorch loop (the real one lives in
``resnetkit.train``); it only has to leave a model whose BatchNorm running statistics and
predictions are those of a real, partly trained network. It is trained once per process.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from resnetkit.data import ImageDataset, PreprocessingSpec, compute_preprocessing, load_dataset
from resnetkit.data.sources import DEFAULT_FASHION_MNIST_DIR
from resnetkit.models import create_model, save_model

FASHION_DIR = DEFAULT_FASHION_MNIST_DIR
ARCH = "resnet8"
ARCH_KWARGS = {"in_chans": 1, "num_classes": 10}
TRAIN_STEPS = 20
TRAIN_BATCH = 32


def require_fashion_mnist() -> Path:
    """The Fashion-MNIST directory; the test fails (not skips) without it, as CI has it."""
    import pytest

    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"Fashion-MNIST missing in {FASHION_DIR}: apt-get install dataset-fashion-mnist"
        )
    return FASHION_DIR


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread, then restore the previous count.

    On a loaded 2-core machine two OpenMP threads contending with other processes run a
    small model up to ten times slower than one thread does; the tests' results do not
    depend on the thread count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.cache
def fashion_split(split: str, limit: int) -> ImageDataset:
    """The first ``limit`` images of a Fashion-MNIST split."""
    return load_dataset("fashion-mnist", split, data_dir=require_fashion_mnist(), limit=limit)


@functools.cache
def _trained_state() -> tuple[dict[str, torch.Tensor], PreprocessingSpec]:
    with one_thread():
        return _train()


def _train() -> tuple[dict[str, torch.Tensor], PreprocessingSpec]:
    torch.manual_seed(0)
    train = fashion_split("train", TRAIN_STEPS * TRAIN_BATCH)
    spec = compute_preprocessing(train)
    model = create_model(ARCH, **ARCH_KWARGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    model.train()
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    for images, labels in zip(
        train.images.split(TRAIN_BATCH), train.labels.split(TRAIN_BATCH), strict=True
    ):
        x = (images.float() / 255.0 - mean) / std  # (B, 1, 28, 28)
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, spec


def trained_model() -> tuple[nn.Module, PreprocessingSpec]:
    """A fresh copy of the briefly trained resnet8, in eval mode, and its spec."""
    state, spec = _trained_state()
    model = create_model(ARCH, **ARCH_KWARGS)
    model.load_state_dict(state)
    return model.eval(), spec


def write_model_dir(directory: Path) -> Path:
    """Save the briefly trained resnet8 as a model directory (model.json + safetensors)."""
    model, spec = trained_model()
    save_model(
        model,
        directory,
        arch=ARCH,
        kwargs=ARCH_KWARGS,
        labels=fashion_split("test", 16).classes,
        preprocessing=spec,
    )
    return directory
