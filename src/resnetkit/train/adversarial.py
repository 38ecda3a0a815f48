"""L-infinity attacks in pixel space, for adversarial training and the robustness report.

Every attack works on images scaled to [0, 1] *before* normalisation: ``eps`` is a
fraction of the pixel range (``eps=0.1`` is about 25 grey levels), whatever the model's
mean and std. :class:`PixelSpaceModel` puts the model's own normalisation in front of it,
so gradients flow back to the pixels::

    pixels = images.float() / 255                        # (B, C, H, W) in [0, 1]
    model01 = PixelSpaceModel(model, spec)
    adv = pgd(model01, pixels, labels, eps=0.1, steps=20, generator=gen)

PGD is Madry et al.'s (random start, ``steps`` signed-gradient steps of ``alpha``, projected
back into the eps-ball and [0, 1]); FGSM is one step of ``eps`` from the clean image; the
fast FGSM of Wong et al. (``fgsm-rs``) is one step of ``alpha = 1.25 eps`` from a random
start, which is PGD with one step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.config import AdversarialConfig
from resnetkit.contract import PreprocessingSpec
from resnetkit.data import AugmentedBatch, normalize
from resnetkit.errors import ConfigError

__all__ = [
    "ATTACKS",
    "PixelSpaceModel",
    "adversarial_batch",
    "attack",
    "attack_accuracy",
    "attack_correct",
    "check_adversarial",
    "check_eps",
    "clean_correct",
    "clean_count",
    "fgsm",
    "pgd",
    "worst_case_accuracy",
]

#: Attack names the report and the trainer accept.
ATTACKS = ("fgsm", "fgsm-rs", "pgd")

Loss = Callable[[torch.Tensor], torch.Tensor]
#: Pixels ``(B, C, H, W)`` in [0, 1] -> logits ``(B, K)``: a PixelSpaceModel, or any callable.
PixelModel = Callable[[torch.Tensor], torch.Tensor]


class PixelSpaceModel(nn.Module):
    """``model`` applied to ``[0, 1]`` pixels: the spec's normalisation comes first."""

    def __init__(self, model: nn.Module, spec: PreprocessingSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        # Take the model's mode: tools that save and restore ``training`` (torchattacks does)
        # would otherwise put an eval-mode model's BatchNorm into training mode.
        self.train(model.training)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of pixels ``(B, C, H, W)`` in [0, 1]."""
        return self.model(normalize(pixels, self.spec))


def check_eps(eps: float, what: str = "eps") -> None:
    """Refuse an eps outside [0, 1] (the pixel range).

    Raises:
        ConfigError: naming ``what`` and the value.
    """
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(f"{what} is a fraction of the pixel range, in [0, 1]; got {eps:g}")


def _input_gradient(model: PixelModel, x: torch.Tensor, loss_fn: Loss) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = loss_fn(model(x).float())
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _default_loss(labels: torch.Tensor) -> Loss:
    return lambda logits: F.cross_entropy(logits, labels)


def fgsm(
    model: PixelModel,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    loss_fn: Loss | None = None,
) -> torch.Tensor:
    """One signed-gradient step of ``eps`` from the clean pixels, clipped to [0, 1]."""
    grad = _input_gradient(model, pixels, loss_fn or _default_loss(labels))
    return (pixels + eps * grad.sign()).clamp(0.0, 1.0).detach()


def pgd(
    model: PixelModel,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    alpha: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: Loss | None = None,
) -> torch.Tensor:
    """Projected gradient descent in the L-infinity ball of radius ``eps`` around ``pixels``.

    Args:
        alpha: the step size; ``2.5 * eps / steps`` when not given (Madry et al.).
        random_start: start from a uniform point of the ball (drawn from ``generator``).
        loss_fn: logits ``(B, K)`` -> the loss to increase; cross-entropy by default.
    """
    if steps < 1:
        raise ConfigError(f"PGD needs at least 1 step, got {steps}")
    step = 2.5 * eps / steps if alpha is None else alpha
    loss_fn = loss_fn or _default_loss(labels)
    x = pixels.detach()
    if random_start:
        gen_device = generator.device if generator is not None else pixels.device
        noise = torch.rand(pixels.shape, generator=generator, device=gen_device)
        x = (pixels + (2 * noise.to(pixels.device) - 1) * eps).clamp(0.0, 1.0)
    for _ in range(steps):
        grad = _input_gradient(model, x, loss_fn)
        x = x + step * grad.sign()
        x = torch.min(torch.max(x, pixels - eps), pixels + eps).clamp(0.0, 1.0).detach()
    return x


def attack(
    method: str,
    model: PixelModel,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    alpha: float | None = None,
    generator: torch.Generator | None = None,
    loss_fn: Loss | None = None,
) -> torch.Tensor:
    """Adversarial pixels by ``method`` (one of :data:`ATTACKS`).

    ``fgsm-rs`` takes one step of ``alpha`` (default ``1.25 * eps``) from a random start.

    Raises:
        ConfigError: an unknown method or an eps outside [0, 1].
    """
    check_eps(eps)
    if method == "fgsm":
        return fgsm(model, pixels, labels, eps, loss_fn=loss_fn)
    if method == "fgsm-rs":
        step = 1.25 * eps if alpha is None else alpha
        return pgd(
            model, pixels, labels, eps, steps=1, alpha=step, generator=generator, loss_fn=loss_fn
        )
    if method == "pgd":
        return pgd(
            model, pixels, labels, eps, steps=steps, alpha=alpha, generator=generator,
            loss_fn=loss_fn,
        )  # fmt: skip
    raise ConfigError(f"attack {method!r} is not known; use {', '.join(ATTACKS)}")


def check_adversarial(cfg: AdversarialConfig) -> None:
    """Refuse adversarial-training settings that make no sense, before any work.

    Raises:
        ConfigError: naming the setting and its valid range.
    """
    methods = ("none", "fgsm-rs", "pgd")
    if cfg.method not in methods:
        raise ConfigError(
            f"adversarial.method {cfg.method!r} is not known; use {', '.join(methods)}"
        )
    check_eps(cfg.eps, "adversarial.eps")
    if cfg.alpha is not None and not 0.0 < cfg.alpha <= 1.0:
        raise ConfigError(f"adversarial.alpha must be in (0, 1] when set, got {cfg.alpha:g}")
    if cfg.steps < 1:
        raise ConfigError(f"adversarial.steps must be >= 1, got {cfg.steps}")
    if not 0.0 <= cfg.clean_weight < 1.0:
        raise ConfigError(
            f"adversarial.clean_weight is the share of each batch left clean, in [0, 1); "
            f"got {cfg.clean_weight:g}"
        )


def clean_count(batch_size: int, clean_weight: float) -> int:
    """How many images of a batch of ``batch_size`` stay clean: ``round(clean_weight * B)``."""
    return min(round(clean_weight * batch_size), batch_size)


def adversarial_batch(
    model: nn.Module,
    batch: AugmentedBatch,
    cfg: AdversarialConfig,
    spec: PreprocessingSpec,
    generator: torch.Generator,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> torch.Tensor:
    """The attacked version of a normalised training batch, normalised again ``(B, C, H, W)``.

    The batch is mapped back to pixels, attacked against its (possibly mixed) targets with
    the run's mixed precision, and normalised. The random start is drawn from the run's
    ``generator``, which checkpoints save, so a resumed run attacks exactly as an
    uninterrupted one. The first :func:`clean_count` images (``cfg.clean_weight`` of the
    batch, which the loader has shuffled) are returned unchanged and not attacked: the
    batch's mean loss is then the mixed objective of Goodfellow et al. and Kurakin et al.
    """
    keep = clean_count(len(batch.images), cfg.clean_weight)
    if keep == 0:
        return _attacked(model, batch, cfg, spec, generator, autocast)
    if keep == len(batch.images):
        return batch.images
    rest = dataclasses.replace(
        batch,
        images=batch.images[keep:],
        targets=batch.targets[keep:],
        partner_targets=batch.partner_targets[keep:],
    )
    adv = _attacked(model, rest, cfg, spec, generator, autocast)
    return torch.cat([batch.images[:keep], adv])


def _attacked(
    model: nn.Module,
    batch: AugmentedBatch,
    cfg: AdversarialConfig,
    spec: PreprocessingSpec,
    generator: torch.Generator,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> torch.Tensor:
    x = batch.images
    spec = dataclasses.replace(spec, size=(x.shape[-2], x.shape[-1]))  # crops may be smaller
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    # Augmentations (erasing, mixing) stay in the pixel range: clamping only undoes rounding.
    pixels = (x * std + mean).clamp(0.0, 1.0)
    pixel_model = PixelSpaceModel(model, spec)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return batch.cross_entropy(logits.float())

    def forward(p: torch.Tensor) -> torch.Tensor:
        with autocast():
            return pixel_model(p)

    adv = attack(
        "fgsm-rs" if cfg.method == "fgsm-rs" else "pgd",
        forward, pixels, batch.targets, cfg.eps,
        steps=cfg.steps, alpha=cfg.alpha, generator=generator, loss_fn=loss_fn,
    )  # fmt: skip
    return normalize(adv, spec)


def _correct(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Whether ``model`` classifies each image right after ``perturb(pixels, labels)``, batch
    by batch: ``bool`` ``(N,)`` on the CPU."""
    correct = []
    for start in range(0, len(images), batch_size):
        pixels = images[start : start + batch_size].to(device).float() / 255.0
        target = labels[start : start + batch_size].to(device)
        seen = perturb(pixels, target)
        with torch.no_grad():
            correct.append((model(seen).argmax(dim=1) == target).cpu())
        if on_batch is not None:
            on_batch(len(target))
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


def attack_correct(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    eps: float,
    *,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Whether ``model`` still classifies each image (``uint8`` ``(N, C, H, W)``) right under
    attack: a ``bool`` tensor ``(N,)`` on the CPU.

    The random starts are drawn from one generator seeded with ``seed``, on ``device``.
    ``on_batch`` gets the number of images of each finished batch (a progress bar).
    """
    check_eps(eps)
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def attacked(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return attack(method, model, pixels, target, eps, steps=steps, generator=generator)

    return _correct(model, images, labels, attacked, batch_size, device, on_batch)


def clean_correct(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Whether ``model`` classifies each clean image right: ``bool`` ``(N,)`` on the CPU."""
    return _correct(
        model, images, labels, lambda pixels, _: pixels, batch_size, torch.device(device)
    )


def attack_accuracy(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    eps: float,
    *,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Top-1 accuracy under attack: the share of :func:`attack_correct` (same arguments)."""
    correct = attack_correct(
        model, images, labels, method, eps, steps=steps, seed=seed, batch_size=batch_size,
        device=device, on_batch=on_batch,
    )  # fmt: skip
    return float(correct.float().mean()) if len(correct) else 0.0


def worst_case_accuracy(
    clean: torch.Tensor, correct: dict[tuple[str, float], torch.Tensor], eps: list[float]
) -> list[float]:
    """Accuracy within each L-infinity budget against every attack that was run.

    An image counts at budget ``e`` only if it was classified right clean and under every
    attack of ``correct`` (keyed ``(method, eps)``) whose eps is at most ``e``: each of those
    perturbations lies inside the ``e``-ball, so an adversary with budget ``e`` could have
    used whichever fooled the model (the per-image worst case of an attack ensemble, as
    AutoAttack reports robust accuracy). It never increases with ``e`` and is at most every
    single attack's accuracy. A single attack at a fixed step need not be monotone in eps:
    FGSM's one full step can overshoot the loss's ascent at a larger eps.

    Args:
        clean: ``(N,)`` bool, right on the clean images.
        correct: ``(N,)`` bool per ``(method, eps)``.
        eps: the budgets to report, in the order wanted.
    """
    out = []
    for budget in eps:
        alive = clean.clone()
        for (_, e), right in correct.items():
            if e <= budget:
                alive &= right
        out.append(float(alive.float().mean()) if len(alive) else 0.0)
    return out
