"""Augmentation of whole batches of tensors, on whatever device the batch lives on.

Each function draws its random numbers from an explicit ``torch.Generator``, on the
generator's device, then moves the few per-sample parameters to the batch's device; so a
CPU generator gives the same augmentation on CPU and GPU, and a run is reproducible bit for
bit from the generator's seed. Crops and flips work on ``uint8`` batches (before
normalisation, cheaper); erasing and mixing belong after :func:`~resnetkit.data.normalize`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from resnetkit.data.preprocess import PreprocessingSpec, normalize
from resnetkit.errors import ConfigError

__all__ = [
    "AugmentSpec",
    "AugmentedBatch",
    "alternating_flips",
    "augment_batch",
    "cutmix",
    "mixup",
    "random_crop",
    "random_erasing",
    "random_hflip",
    "translate",
]


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _randint(high: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    out = torch.randint(0, high, (n,), generator=generator, device=generator.device)
    return out.to(device)


def random_crop(
    images: torch.Tensor,
    padding: int,
    generator: torch.Generator,
    fill: int = 0,
    size: int | None = None,
) -> torch.Tensor:
    """Pad each image by ``padding`` pixels with ``fill``, then crop it at a random offset.

    Args:
        images: ``(B, C, H, W)`` of any dtype.
        padding: pixels added on every side.
        generator: source of the offsets.
        fill: value of the padding.
        size: side of the square crops; ``None`` crops back to ``(H, W)`` (and with no
            padding returns the batch unchanged). Smaller crops make cheaper steps, as in
            progressive resizing.

    Raises:
        ConfigError: ``size`` is not positive or larger than the padded images.
    """
    batch, channels, height, width = images.shape
    if size is None:
        if padding == 0:
            return images
        out_h, out_w = height, width
    else:
        if size < 1 or size > min(height, width) + 2 * padding:
            raise ConfigError(
                f"crop size {size} does not fit {height}x{width} images padded by {padding}"
            )
        out_h = out_w = size
    padded = F.pad(images, (padding, padding, padding, padding), value=fill)
    padded_height, padded_width = height + 2 * padding, width + 2 * padding
    device = images.device
    dy = _randint(padded_height - out_h + 1, batch, generator, device)
    dx = _randint(padded_width - out_w + 1, batch, generator, device)
    # One gather over the flattened padded images: the window's top-left pixel is at
    # dy * padded_width + dx, and the other pixels keep their offsets from it.
    rows = torch.arange(out_h, device=device)[:, None] * padded_width
    window = (rows + torch.arange(out_w, device=device)).view(1, -1)  # (1, h*w)
    index = window + (dy * padded_width + dx)[:, None]  # (B, h*w)
    index = index[:, None, :].expand(batch, channels, out_h * out_w)
    flat = padded.reshape(batch, channels, -1).gather(2, index)
    return flat.view(batch, channels, out_h, out_w)


def translate(images: torch.Tensor, dy: int, dx: int, fill: int = 0) -> torch.Tensor:
    """Shift every image ``dy`` pixels down and ``dx`` right, filling the edge with ``fill``.

    The deterministic counterpart of :func:`random_crop`, for test-time augmentation.
    """
    if dy == 0 and dx == 0:
        return images
    pad_y, pad_x = abs(dy), abs(dx)
    height, width = images.shape[-2:]
    padded = F.pad(images, (pad_x, pad_x, pad_y, pad_y), value=fill)
    top, left = pad_y - dy, pad_x - dx
    return padded[..., top : top + height, left : left + width]


def random_hflip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right with probability ``p``."""
    return flip_where(images, _uniform(images.shape[0], generator, images.device) < p)


def flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images of ``(B, C, H, W)`` whose ``(B,)`` boolean ``flips`` is set."""
    return torch.where(flips.to(images.device)[:, None, None, None], images.flip(3), images)


def alternating_flips(indices: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """Which samples to flip in ``epoch`` with derandomised flips (Jordan, 2024, airbench).

    Each sample's flip in epoch 0 is a fixed coin toss from ``(seed, index)``; every later
    epoch flips exactly the samples the epoch before did not. Over any two consecutive epochs
    the network sees each image both ways, where random flips show a quarter of the images
    the same way twice. Stateless, so resumed and distributed runs agree.

    Args:
        indices: dataset indices of the batch's samples, ``(B,)`` integers.
        epoch: the epoch, from 0.
        seed: the run's seed.

    Returns:
        ``(B,)`` booleans on the indices' device.
    """
    # Knuth's multiplicative hash; the top bit of a 32-bit product is a well-mixed coin.
    key = (indices.long() + seed * 1_000_003) % 2**31
    coin = ((key * 2_654_435_761) % 2**32) >> 31
    return (coin + epoch) % 2 == 1


def random_erasing(
    images: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> torch.Tensor:
    """Erase one random rectangle per image, with probability ``p`` (Zhong et al., 2017).

    Apply it to normalised batches, where the default ``value`` 0 is the dataset mean.

    Args:
        images: ``(B, C, H, W)``.
        generator: source of the rectangles.
        p: probability that an image gets a rectangle.
        scale: range of the rectangle's area as a fraction of the image.
        ratio: range of its aspect ratio (height / width), sampled log-uniformly.
        value: what the rectangle is filled with.
    """
    batch, _, height, width = images.shape
    device = images.device
    area = height * width * (scale[0] + (scale[1] - scale[0]) * _uniform(batch, generator, device))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _uniform(batch, generator, device))
    h = (area * aspect).sqrt().round().clamp(1, height)
    w = (area / aspect).sqrt().round().clamp(1, width)
    top = ((height - h + 1) * _uniform(batch, generator, device)).floor()
    left = ((width - w + 1) * _uniform(batch, generator, device)).floor()
    apply = _uniform(batch, generator, device) < p
    ys = torch.arange(height, device=device)[None, :, None]
    xs = torch.arange(width, device=device)[None, None, :]
    inside = (
        (ys >= top[:, None, None])
        & (ys < (top + h)[:, None, None])
        & (xs >= left[:, None, None])
        & (xs < (left + w)[:, None, None])
    )  # (B, H, W)
    mask = (inside & apply[:, None, None])[:, None]  # (B, 1, H, W)
    return images.masked_fill(mask, value)


def _beta(alpha: float, generator: torch.Generator) -> float:
    # torch's Beta sampler takes no generator; seed numpy's from ours to stay reproducible.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _partners(batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randperm(batch, generator=generator, device=generator.device).to(device)


def mixup(
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Blend each image with a partner from the same batch (Zhang et al., 2018).

    Returns:
        ``(mixed, partner_labels, lam)``: the loss is
        ``lam * loss(labels) + (1 - lam) * loss(partner_labels)``.

    Raises:
        ConfigError: the images are not floating point (normalise first).
    """
    if not images.is_floating_point():
        raise ConfigError("mixup needs floating-point images; normalise the batch first")
    lam = _beta(alpha, generator)
    partner = _partners(images.shape[0], generator, images.device)
    return images.lerp(images[partner], 1.0 - lam), labels[partner], lam


def cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a random box from a partner image into each image (Yun et al., 2019).

    The same box is used for the whole batch; ``lam`` is the fraction of each image left.

    Returns:
        ``(mixed, partner_labels, lam)``, as :func:`mixup`.
    """
    _, _, height, width = images.shape
    cut = math.sqrt(1.0 - _beta(alpha, generator))
    centre = torch.rand(2, generator=generator, device=generator.device).tolist()
    cy, cx = int(centre[0] * height), int(centre[1] * width)
    half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
    y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
    x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
    partner = _partners(images.shape[0], generator, images.device)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[partner, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return mixed, labels[partner], lam


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Which batch augmentations to apply during training.

    Attributes:
        crop_padding: random-crop padding in pixels (0: no crop).
        crop_size: side of the random crops (``None``: the image size); the trainer sets it
            for the first epochs of a recipe with ``small_crop``.
        hflip: random horizontal flips; only for datasets that allow them.
        alternate_flips: with ``hflip``, flip each image in every other epoch instead of
            at random (:func:`alternating_flips`); the caller passes the flips to
            :func:`augment_batch`, since only it knows the samples' indices and the epoch.
        erase_prob: probability of random erasing per image (0: off).
        mixup_alpha: Beta parameter of mixup (0: off).
        cutmix_alpha: Beta parameter of cutmix (0: off). With both on, each batch uses one
            of the two, chosen at random.
        mix_prob: probability that a batch is mixed at all.
    """

    crop_padding: int = 0
    crop_size: int | None = None
    hflip: bool = False
    alternate_flips: bool = False
    erase_prob: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ConfigError("crop_padding, mixup_alpha and cutmix_alpha must not be negative")
        if self.crop_size is not None and self.crop_size < 1:
            raise ConfigError(f"crop_size must be a positive number of pixels: {self.crop_size}")
        if not (0.0 <= self.erase_prob <= 1.0 and 0.0 <= self.mix_prob <= 1.0):
            raise ConfigError("erase_prob and mix_prob must be probabilities in [0, 1]")


@dataclasses.dataclass(frozen=True)
class AugmentedBatch:
    """A normalised, augmented batch and its (possibly mixed) targets.

    The loss is ``lam * loss(logits, targets) + (1 - lam) * loss(logits, partner_targets)``;
    without mixing, ``lam`` is 1 and the partner targets equal the targets.
    """

    images: torch.Tensor  # (B, C, H, W) float
    targets: torch.Tensor  # (B,) int64
    partner_targets: torch.Tensor  # (B,) int64
    lam: float

    def cross_entropy(
        self, logits: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> torch.Tensor:
        """The cross-entropy of ``logits`` against the mixed targets: the mean, or with
        ``reduction="none"`` each image's ``(B,)``."""
        loss = F.cross_entropy(
            logits, self.targets, label_smoothing=label_smoothing, reduction=reduction
        )
        if self.lam == 1.0:
            return loss
        partner = F.cross_entropy(
            logits, self.partner_targets, label_smoothing=label_smoothing, reduction=reduction
        )
        return self.lam * loss + (1.0 - self.lam) * partner


def _mix(
    images: torch.Tensor, labels: torch.Tensor, spec: AugmentSpec, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    draws = torch.rand(2, generator=generator, device=generator.device).tolist()
    if draws[0] >= spec.mix_prob:
        return images, labels, 1.0
    use_cutmix = spec.cutmix_alpha > 0 and (spec.mixup_alpha == 0 or draws[1] < 0.5)
    if use_cutmix:
        return cutmix(images, labels, spec.cutmix_alpha, generator)
    return mixup(images, labels, spec.mixup_alpha, generator)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: AugmentSpec,
    preprocessing: PreprocessingSpec,
    generator: torch.Generator,
    flips: torch.Tensor | None = None,
) -> AugmentedBatch:
    """Augment and normalise one training batch: crop, flip, normalise, erase, mix.

    Args:
        images: ``uint8`` batch ``(B, C, H, W)`` on any device.
        labels: ``int64`` class indices ``(B,)`` on the same device.
        spec: which augmentations to apply.
        preprocessing: the normalisation to apply.
        generator: the one source of randomness; the same state gives the same batch.
        flips: with ``spec.hflip``, which images to flip (``(B,)`` booleans, e.g. from
            :func:`alternating_flips`) instead of random ones.
    """
    images = random_crop(images, spec.crop_padding, generator, size=spec.crop_size)
    if spec.crop_size is not None:  # the crops are smaller than the images the spec describes
        preprocessing = dataclasses.replace(preprocessing, size=(spec.crop_size, spec.crop_size))
    if spec.hflip and flips is not None:
        images = flip_where(images, flips)
    elif spec.hflip:
        images = random_hflip(images, generator)
    x = normalize(images, preprocessing)
    if spec.erase_prob > 0:
        x = random_erasing(x, generator, p=spec.erase_prob)
    if spec.mixup_alpha > 0 or spec.cutmix_alpha > 0:
        x, partner, lam = _mix(x, labels, spec, generator)
        return AugmentedBatch(x, labels, partner, lam)
    return AugmentedBatch(x, labels, labels, 1.0)
