"""Grad-CAM and Grad-CAM++: which part of an input a zoo model's prediction rests on.

Grad-CAM (Selvaraju et al. 2017) weighs each channel of a stage's feature map ``A`` by the
spatial mean of the gradient of the class score ``y_c`` (the logit) with respect to it, sums
the weighted channels and keeps the positive part: ``ReLU(sum_k w_k A_k)``. Grad-CAM++
(Chattopadhay et al. 2018) weighs each location's positive gradient by a closed-form
``alpha`` instead, which separates several instances of one class better.

It works on any :class:`~resnetkit.models.ClassifierModel` through the shared interface: the
stages are the modules named in ``model.feature_info`` (``layer1``..``layer4`` for a ResNet,
``stages.0``.. for ResNet-9, the transformer's ``norm`` for the hybrid, whose tokens are laid
back on their grid as ``forward_intermediates`` does; with a class-token head, the last
block's normalised input, the only place where the patch tokens still reach the score).
Images give ``(H, W)`` maps and 1-D ResNets ``(L,)`` maps; tabular models have no spatial
layout and are refused.

:func:`overlay` and :func:`overlay_png` draw a map over the image it explains, e.g. for an
HTTP endpoint; :func:`save_overlay` writes one atomically.
"""

from __future__ import annotations

import io
import operator
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write, check_output_file
from resnetkit.models import ClassifierModel, ResNetHybrid
from resnetkit.models.hybrid import TransformerBlock

__all__ = [
    "METHODS",
    "Explanation",
    "explain",
    "overlay",
    "overlay_png",
    "save_overlay",
    "stage_names",
]

METHODS = ("gradcam", "gradcam++")
_EPS = 1e-7  # guards the Grad-CAM++ denominator and the [0, 1] rescaling of flat maps
_FLAT_REL = 1e-4  # a map whose range is below this fraction of its peak counts as flat

TargetClass = int | Sequence[int] | torch.Tensor | None


@dataclass(frozen=True, eq=False)
class Explanation:
    """Class-activation maps for one batch, with the predictions they explain.

    Every tensor is detached and lies on the device of the input batch.

    Attributes:
        maps: ``(B, H, W)`` (``(B, L)`` for 1-D models) float32 in ``[0, 1]``, upsampled
            to the input's size; each map rescaled so its peak is 1 (all zeros if flat).
        raw_maps: ``(B, h, w)`` float32 ``>= 0`` at the stage's resolution, not rescaled.
        target_classes: ``(B,)`` int64, the class each map explains.
        probabilities: ``(B, K)`` float32 softmax of the logits.
        stage: the stage the maps come from (a name of :func:`stage_names`).
        method: ``"gradcam"`` or ``"gradcam++"``.
    """

    maps: torch.Tensor
    raw_maps: torch.Tensor
    target_classes: torch.Tensor
    probabilities: torch.Tensor
    stage: str
    method: str

    def topk(self, k: int = 5) -> list[list[tuple[int, float]]]:
        """The ``k`` most probable ``(class index, probability)`` pairs of each sample.

        Raises:
            ConfigError: unless ``1 <= k <= K``.
        """
        num_classes = self.probabilities.shape[1]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
            raise ConfigError(f"k must be an integer in [1, {num_classes}], got {k!r}")
        values, indices = self.probabilities.topk(k, dim=1)
        return [
            [(int(i), float(v)) for i, v in zip(row_i, row_v, strict=True)]
            for row_i, row_v in zip(indices.tolist(), values.tolist(), strict=True)
        ]


def stage_names(model: ClassifierModel) -> list[str]:
    """The stages a map can come from, shallowest first (``model.feature_info`` modules)."""
    return [str(info["module"]) for info in model.feature_info]


def explain(
    model: ClassifierModel,
    x: torch.Tensor,
    *,
    target_class: TargetClass = None,
    stage: str | int | None = None,
    method: str = "gradcam",
) -> Explanation:
    """Grad-CAM (or Grad-CAM++) maps of ``model`` on a batch.

    The model runs in eval mode (running norm statistics, no dropout), so the maps explain
    the prediction it serves; afterwards every module is back in its own mode, no hook is
    left and no parameter's ``.grad`` has changed, also when an error is raised.

    Args:
        model: any zoo model with spatial feature maps (images or 1-D sequences).
        x: a normalised float batch ``(B, C, H, W)`` (or ``(B, C, L)``) on the model's device.
        target_class: the class to explain: one index for the whole batch, one per sample,
            or ``None`` for each sample's predicted class.
        stage: a name from :func:`stage_names` (e.g. ``"layer3"``) or an index into it;
            ``None`` is the last stage.
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        The maps, the target classes and the predicted probabilities.

    Raises:
        ConfigError: for a model without spatial maps, an input on another device, an
            unknown stage (listing the valid ones), method or class index.
    """
    _check_request(model, x, method)
    name, module, index = _resolve_stage(model, stage)
    targets = _check_targets(target_class, x.shape[0], model.num_classes)
    logits, chosen, activation, grads = _forward_backward(model, module, name, x, targets)
    spatial = tuple(x.shape[2:])
    grid = _stage_grid(model, index, spatial)
    acts = _as_map(activation, grid, name).float()
    grads = _as_map(grads, grid, name).float()
    raw = _gradcam(acts, grads) if method == "gradcam" else _gradcam_pp(acts, grads)
    return Explanation(
        maps=_upsample_unit(raw, spatial),
        raw_maps=raw,
        target_classes=chosen,
        probabilities=logits.float().softmax(dim=1),
        stage=name,
        method=method,
    )


def _forward_backward(
    model: ClassifierModel,
    module: nn.Module,
    name: str,
    x: torch.Tensor,
    targets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, target classes, stage output, d score / d stage output)``, all detached.

    Gradients are taken with ``autograd.grad`` for the stage output alone, so no
    parameter's ``.grad`` is touched; it works under ``no_grad`` and ``inference_mode``.
    """
    with _eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        # A fresh leaf that needs grad: the graph exists even if every parameter is frozen.
        inp = x.detach().clone().requires_grad_(True)
        with _capture_output(module, name) as captured:
            logits = model(inp)
        activation = captured[0]
        chosen = logits.argmax(dim=1) if targets is None else targets.to(logits.device)
        score = logits.gather(1, chosen[:, None]).sum()
        (grads,) = torch.autograd.grad(score, activation)
    return logits.detach(), chosen, activation.detach(), grads


def _check_request(model: ClassifierModel, x: torch.Tensor, method: str) -> None:
    """Everything about the call that can be checked before running the model."""
    if not isinstance(model, ClassifierModel):
        raise ConfigError(f"Grad-CAM needs a zoo model (ClassifierModel), got {type(model)}")
    if method not in METHODS:
        raise ConfigError(f"method {method!r} is not known; use one of {', '.join(METHODS)}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ConfigError("x must be a normalised float tensor (B, C, H, W)")
    if x.ndim < 3:
        raise ConfigError(
            f"{type(model).__name__} takes input of shape {tuple(x.shape)}, which has no "
            "spatial layout; Grad-CAM needs images (B, C, H, W) or sequences (B, C, L)"
        )
    if x.shape[0] == 0:
        raise ConfigError("x is an empty batch; give at least one sample")
    param = next(model.parameters(), None)
    if param is not None and param.device != x.device:
        raise ConfigError(
            f"x is on {x.device} but the model is on {param.device}; move one to the other"
        )


def _resolve_stage(model: ClassifierModel, stage: str | int | None) -> tuple[str, nn.Module, int]:
    """``(name, module, index)`` of the requested stage."""
    names = stage_names(model)
    if stage is None:
        index = len(names) - 1
    elif (
        isinstance(stage, int) and not isinstance(stage, bool) and -len(names) <= stage < len(names)
    ):
        index = stage % len(names)
    elif isinstance(stage, str) and stage in names:
        index = names.index(stage)
    else:
        raise ConfigError(
            f"stage {stage!r} is not a stage of {type(model).__name__}; valid stages: "
            f"{', '.join(names)} (or an index from {-len(names)} to {len(names) - 1})"
        )
    if isinstance(model, ResNetHybrid) and model.pool == "cls" and index == len(names) - 1:
        # A class-token head sees the patch tokens only through the last attention, so the
        # final norm's patch tokens get no gradient; read the last block's normalised input,
        # as Grad-CAM recipes for vision transformers do.
        last = model.blocks[-1]
        assert isinstance(last, TransformerBlock)
        return names[index], last.norm1, index
    return names[index], _find_module(model, names[index]), index


def _find_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose output is stage ``name``'s map.

    ``name`` is a path in ``model``, or the end of exactly one path (a wrapped trunk, as in
    the hybrid). A ``Sequential`` stage may be run block by block (for grad checkpointing)
    without its own ``forward`` being called; its last block gives the same output.
    """
    try:
        module = model.get_submodule(name)
    except AttributeError:
        found = [m for path, m in model.named_modules() if path.endswith(f".{name}")]
        if len(found) != 1:
            raise ConfigError(
                f"{type(model).__name__}.feature_info names a module {name!r} that "
                f"{'is ambiguous' if found else 'does not exist'}; fix the model's feature_info"
            ) from None
        module = found[0]
    while isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    return module


def _check_targets(target_class: TargetClass, batch: int, num_classes: int) -> torch.Tensor | None:
    """The target classes as a ``(B,)`` int64 CPU tensor, or ``None`` for the predicted ones."""
    if target_class is None:
        return None
    if isinstance(target_class, torch.Tensor):
        values: list[Any] = target_class.flatten().tolist()
        if target_class.ndim == 0:
            values = values * batch
    elif isinstance(target_class, Sequence):
        values = list(target_class)
    else:
        values = [target_class] * batch
    if len(values) != batch:
        raise ConfigError(f"target_class has {len(values)} entries for a batch of {batch}")
    out = []
    for value in values:
        try:
            index = operator.index(value)
        except TypeError:
            index = -1
        if isinstance(value, bool) or not 0 <= index < num_classes:
            raise ConfigError(
                f"target_class {value!r} is not a class index in [0, {num_classes - 1}]"
            )
        out.append(index)
    return torch.tensor(out, dtype=torch.int64)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; afterwards each module in the mode it had (modes may be mixed)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _capture_output(module: nn.Module, name: str) -> Iterator[list[torch.Tensor]]:
    """Collect ``module``'s output during a forward pass; the hook is removed on any exit."""
    outputs: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        outputs.append(output)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()
    if len(outputs) != 1 or not isinstance(outputs[0], torch.Tensor):
        raise ConfigError(
            f"stage {name!r} must produce one tensor per forward pass, got {len(outputs)} outputs"
        )


def _stage_grid(model: ClassifierModel, index: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Expected size of a stage's map: the input size over the stage's reduction, rounded up."""
    reduction = int(model.feature_info[index].get("reduction", 1))
    return tuple(-(-size // reduction) for size in spatial)


def _as_map(t: torch.Tensor, grid: tuple[int, ...], name: str) -> torch.Tensor:
    """A stage output as ``(B, C, *spatial)``: tokens ``(B, T, D)`` are laid on ``grid``.

    A token stage (the hybrid's transformer) may lead with extra tokens (a class token);
    they are dropped, as ``forward_intermediates`` does.
    """
    if t.ndim == len(grid) + 2:
        return t
    cells = int(np.prod(grid))
    if len(grid) == 2 and t.ndim == 3 and t.shape[1] >= cells:
        tokens = t[:, t.shape[1] - cells :]  # (B, h*w, D)
        return tokens.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)
    raise ConfigError(
        f"stage {name!r} gives outputs of shape {tuple(t.shape)}, not feature maps "
        f"(B, C, {', '.join(map(str, grid))}); Grad-CAM needs a stage with a spatial layout"
    )


def _gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_k mean(dy/dA_k) A_k)``: ``(B, C, *s) -> (B, *s)``."""
    spatial = tuple(range(2, acts.ndim))
    weights = grads.mean(dim=spatial, keepdim=True)  # (B, C, 1, 1)
    return (weights * acts).sum(dim=1).clamp_min(0)


def _gradcam_pp(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ with the exponential-score closed form for ``alpha``."""
    spatial = tuple(range(2, acts.ndim))
    g2 = grads.pow(2)
    g3 = g2 * grads
    act_sum = acts.sum(dim=spatial, keepdim=True)  # (B, C, 1, 1)
    alpha = g2 / (2 * g2 + act_sum * g3 + _EPS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * grads.clamp_min(0)).sum(dim=spatial, keepdim=True)
    return (weights * acts).sum(dim=1).clamp_min(0)


def _upsample_unit(raw: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Upsample ``(B, *s)`` maps to ``size`` and rescale each to ``[0, 1]``."""
    mode = "bilinear" if len(size) == 2 else "linear"
    up = F.interpolate(raw[:, None], size=size, mode=mode, align_corners=False)[:, 0]
    flat = up.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = high - low
    # A flat map (e.g. from a 1x1 stage) varies only by rounding; stretching that to [0, 1]
    # would draw noise, so it becomes zeros.
    varies = span > _FLAT_REL * high.abs() + _EPS
    unit = torch.where(varies, (flat - low) / span.clamp_min(_EPS), torch.zeros_like(flat))
    return unit.reshape(up.shape).clamp_(0, 1)


# --- drawing ---------------------------------------------------------------------------------


def overlay(
    image: np.ndarray | Image.Image,
    cam_map: np.ndarray | torch.Tensor,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> np.ndarray:
    """Blend a colour-mapped heat map over an image.

    Args:
        image: uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (alpha is
            dropped), or a PIL image; any size.
        cam_map: a 2-D map in ``[0, 1]`` (e.g. ``explanation.maps[i]``); it is resized to
            the image.
        alpha: weight of the heat map, from 0 (the image only) to 1 (the map only).
        cmap: a matplotlib colormap name (``"jet"``, ``"turbo"``, ``"inferno"``, ...).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ConfigError: for an image or map of the wrong type or shape, a bad alpha or cmap.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}")
    rgb = _as_rgb(image)
    heat = _resize_map(_as_map_array(cam_map), rgb.shape[:2])
    colours = _colormap(cmap)(heat)[..., :3]  # (H, W, 3) floats in [0, 1]
    blended = (1 - alpha) * (rgb / 255.0) + alpha * colours
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def overlay_png(
    image: np.ndarray | Image.Image,
    cam_map: np.ndarray | torch.Tensor,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> bytes:
    """:func:`overlay` encoded as PNG bytes (an HTTP response body)."""
    buffer = io.BytesIO()
    Image.fromarray(overlay(image, cam_map, alpha=alpha, cmap=cmap)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray | Image.Image,
    cam_map: np.ndarray | torch.Tensor,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> Path:
    """Write :func:`overlay` as a PNG file, atomically; returns the path.

    Raises:
        ConfigError: for a path that cannot be written or does not end in ``.png`` (checked
            before drawing), or the reasons of :func:`overlay`.
    """
    target = check_output_file(path, what="overlay", suffix=".png")
    data = overlay_png(image, cam_map, alpha=alpha, cmap=cmap)
    atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target


def _as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 from a grey, grey+channel, RGB or RGBA image."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise ConfigError(f"image must be a uint8 array or a PIL image, got {kind}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape[:2]:
        raise ConfigError(
            f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def _as_map_array(cam_map: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 2-D float32 map clipped to ``[0, 1]`` (a leading axis of 1 is dropped)."""
    if isinstance(cam_map, torch.Tensor):
        cam_map = cam_map.detach().float().cpu().numpy()
    arr = np.asarray(cam_map, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise ConfigError(f"cam_map must be one 2-D map (H, W), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError("cam_map has NaN or infinite values")
    return np.clip(arr, 0.0, 1.0)


def _resize_map(heat: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Bilinear resize of a float map to ``size = (H, W)`` (antialiased when shrinking)."""
    if heat.shape == tuple(size):
        return heat
    resized = Image.fromarray(heat).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _colormap(name: str) -> Any:
    try:
        return colormaps[name]
    except KeyError:
        raise ConfigError(
            f"cmap {name!r} is not a matplotlib colormap; try 'jet', 'turbo' or 'inferno'"
        ) from None
