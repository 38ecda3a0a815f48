"""A deterministic, resumable batch loader over in-memory tensors, shardable across ranks.

The order of epoch ``e`` is a permutation derived from ``(seed, e)`` alone, so any step of
any epoch can be recomputed without replaying earlier ones: a run killed in the middle of an
epoch resumes at the exact batch with ``loader.epoch(e, start_step=k)``. With
``world_size > 1`` each rank gets a contiguous slice of every global batch; the union of the
ranks' batches at a step is exactly the single-process batch at that step. Images stay
``uint8`` until a batch is formed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from resnetkit.errors import ConfigError

__all__ = ["BatchLoader", "epoch_generator", "epoch_permutation"]


def epoch_generator(purpose: str, seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on ``(purpose, seed, epoch)`` only: recomputable for any
    epoch without replaying earlier ones, and independent between purposes."""
    digest = hashlib.sha256(f"resnetkit-{purpose}:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch``: a permutation that depends on ``(seed, epoch)`` only."""
    return torch.randperm(num_samples, generator=epoch_generator("loader", seed, epoch))


class BatchLoader:
    """Batches of ``(images, labels)`` in a seeded order, from any step of any epoch.

    Args:
        images: ``(N, C, H, W)`` tensor (usually ``uint8``), on the CPU or already on ``device``.
        labels: ``(N,)`` tensor on the same device as ``images``.
        batch_size: the global batch size (all ranks together).
        shuffle: shuffle each epoch; without it batches follow the stored order.
        seed: seed of the epoch permutations.
        drop_last: drop the last global batch if it is smaller than ``batch_size``.
        rank: this process's rank.
        world_size: number of processes; ``batch_size`` must be a multiple of it.
        device: where batches are delivered; the images' device by default.

    Raises:
        ConfigError: contradictory sizes or ranks.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, "
                f"{rank}, {world_size}"
            )
        if batch_size % world_size:
            raise ConfigError(
                f"the global batch size {batch_size} must be a multiple of world_size {world_size}"
            )
        if drop_last and images.shape[0] < batch_size:
            raise ConfigError(f"drop_last with {images.shape[0]} samples < batch {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = (
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device) if device is not None else images.device

    @property
    def num_samples(self) -> int:
        """Number of samples in the whole dataset."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        return self.steps_for(self.num_samples)

    def steps_for(self, count: int) -> int:
        """Steps of an epoch over ``count`` of the samples (an order of that length)."""
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """All sample indices of ``epoch``, in the order they are served."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return epoch_permutation(self.num_samples, self.seed, epoch)

    def indices(self, epoch: int, step: int, order: torch.Tensor | None = None) -> torch.Tensor:
        """Sample indices of this rank's share of the global batch ``step`` of ``epoch``.

        The last batch without ``drop_last`` may be split unevenly (sizes differ by at most
        one, and a rank may get none); weight losses by sample count, or use ``drop_last``.
        ``order`` replaces the epoch's permutation (e.g. a subset of the samples).
        """
        order = self.order(epoch) if order is None else order
        steps = self.steps_for(order.numel())
        if not 0 <= step < steps:
            raise ConfigError(f"step {step} outside an epoch of {steps} steps")
        global_batch = order[step * self.batch_size : (step + 1) * self.batch_size]
        return torch.tensor_split(global_batch, self.world_size)[self.rank]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's ``(images, labels)`` for steps ``start_step ..`` of ``epoch``."""
        for _, images, labels in self.batches(epoch, start_step):
            yield images, labels

    def batches(
        self, epoch: int, start_step: int = 0, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """As :meth:`epoch`, with each batch's dataset indices first: ``(indices, images,
        labels)``, the indices on the CPU (for per-sample augmentation such as flips).
        ``order`` (dataset indices, any length) replaces the epoch's permutation."""
        order = self.order(epoch) if order is None else order
        steps = self.steps_for(order.numel())
        if not 0 <= start_step <= steps:
            raise ConfigError(f"start_step {start_step} outside an epoch of {steps} steps")
        non_blocking = self.device.type == "cuda"
        for step in range(start_step, steps):
            idx = self.indices(epoch, step, order)
            on_images = idx.to(self.images.device)
            images, labels = self.images[on_images], self.labels[on_images]  # still uint8
            yield (
                idx,
                images.to(self.device, non_blocking=non_blocking),
                labels.to(self.device, non_blocking=non_blocking),
            )
