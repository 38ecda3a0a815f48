"""The OOD detector judged against far-OOD sets: a model's outputs, scores, the report.

Used by ``resnetkit robustness`` (its OOD part) and by the pipeline's gate (candidate and
production side by side). The model is anything shaped like the loader's ``LoadedModel``
(:class:`OODModel`): this stage may not import the loader, so the few members it uses are
spelled out as a protocol, which mypy checks against the real class at every caller.

The in-distribution images are the model's test images; the far-OOD sets are
:func:`~resnetkit.monitor.robustness.far_ood_images` (uniform noise, ``skimage.data``
photos) and, for a Fashion-MNIST model, MNIST digits (and the reverse). Each method's
separation is AUROC and FPR at 95 % TPR (:func:`~resnetkit.monitor.robustness.ood_separation`),
beside the max-softmax baseline of Hendrycks & Gimpel (2017). A model without a detector, or
whose ONNX graph has no embedding output, gets ``{"available": False, "reason": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from resnetkit.errors import DataError
from resnetkit.monitor.ood import METHODS, OODDetector, detector_beside
from resnetkit.monitor.robustness import far_ood_images, ood_separation
from resnetkit.onnxio import EMBEDDING_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import torch

__all__ = [
    "OTHER_DATASET",
    "FarSets",
    "OODModel",
    "far_ood_sets",
    "method_scores",
    "model_outputs",
    "ood_report",
]

#: The far-OOD dataset of a model trained on the key.
OTHER_DATASET = {"fashion-mnist": "mnist", "mnist": "fashion-mnist"}
#: Far-OOD sets by name (``uint8`` ``(N, C, H, W)``), and the sets left out with the reason.
FarSets = tuple[dict[str, np.ndarray], dict[str, str]]


class _Runner(Protocol):
    """An inference backend: every output of a normalised batch, by name."""

    def run(self, batch: Any) -> Mapping[str, np.ndarray]:
        """``logits`` and, where the graph has one, ``embedding``."""
        ...


class _Images(Protocol):
    images: Any  # uint8 (N, C, H, W) torch tensor


class OODModel(Protocol):
    """What this module uses of ``resnetkit.export.LoadedModel``."""

    folder: Path

    @property
    def has_weights(self) -> bool:
        """Whether the model is torch weights."""
        ...

    @property
    def drift_reference(self) -> Path | None:
        """The drift reference file, if any (a detector may be fitted on it)."""
        ...

    @property
    def input_size(self) -> tuple[int, int, int]:
        """One sample's shape ``(C, H, W)``."""
        ...

    def module(self, device: Any = None) -> Any:
        """The torch module in eval mode."""
        ...

    def normalized(self, images: Any) -> Any:
        """``uint8`` images normalised with the model's spec."""
        ...

    def backend(self, kind: str = "auto") -> _Runner:
        """An inference backend of ``kind``."""
        ...

    def dataset(self, split: str, *, data: str | None = None, limit: int | None = None) -> Any:
        """A split of ``data`` at the model's input size."""
        ...


def model_outputs(
    model: OODModel,
    images: np.ndarray,
    device: str | torch.device | None = None,
    *,
    artifact: str | None = None,
    batch_size: int = 500,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Pre-logits embeddings ``(N, D)`` and logits ``(N, K)`` of ``uint8`` images
    ``(N, C, H, W)``, as the server sees them.

    Args:
        artifact: run this ONNX artifact (``onnx``, ``onnx-int8``: what the gate serves).
            None: the torch weights on ``device`` when the model has them, else its ONNX file.

    Returns:
        The embeddings are None for an ONNX graph without an embedding output.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images))
    embeddings: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    if artifact is None and model.has_weights:
        net = model.module(device)
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                batch = model.normalized(x[start : start + batch_size]).to(device)
                emb = net.forward_head(net.forward_features(batch), pre_logits=True)
                embeddings.append(emb.float().cpu().numpy())
                logits.append(net.get_classifier()(emb).float().cpu().numpy())
        return np.concatenate(embeddings), np.concatenate(logits)
    backend = model.backend(artifact or "onnx")
    for start in range(0, len(x), batch_size):
        out = backend.run(model.normalized(x[start : start + batch_size]).numpy())
        logits.append(out[OUTPUT_NAME])
        if EMBEDDING_NAME in out:
            embeddings.append(out[EMBEDDING_NAME])
    return (np.concatenate(embeddings) if embeddings else None), np.concatenate(logits)


def method_scores(
    detector: OODDetector, embeddings: np.ndarray | None, logits: np.ndarray
) -> dict[str, np.ndarray]:
    """Every detector method's served score (higher: more OOD), and ``max_softmax``
    (minus the top softmax probability), per image."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    scores = {m: detector.normalised(embeddings, logits, m) for m in METHODS}
    return {**scores, "max_softmax": -probs.max(axis=1)}


def far_ood_sets(model: OODModel, count: int, *, seed: int, data_name: str) -> FarSets:
    """The far-OOD sets for a model trained on ``data_name``, ``count`` images each.

    Noise and photos always; the other digit set (:data:`OTHER_DATASET`) when it loads at
    the model's input size, else it is listed as unavailable with the reason.
    """
    sets = far_ood_images(model.input_size, count, seed=seed)
    unavailable: dict[str, str] = {}
    other = OTHER_DATASET.get(data_name)
    if other is None:
        return sets, unavailable
    try:
        far: _Images = model.dataset("test", data=other, limit=count)
    except DataError as exc:
        unavailable[other] = str(exc)
        return sets, unavailable
    shape = tuple(far.images.shape[1:])
    if shape == model.input_size:
        return {other: far.images.numpy(), **sets}, unavailable
    unavailable[other] = f"its images are {shape}, the model takes {model.input_size}"
    return sets, unavailable


def ood_report(
    model: OODModel,
    test_images: np.ndarray,
    data_name: str,
    seed: int,
    device: str | torch.device | None = None,
    *,
    artifact: str | None = None,
    far: FarSets | None = None,
) -> dict[str, Any]:
    """The model's detector against far-OOD sets, beside max-softmax.

    Args:
        test_images: in-distribution ``uint8`` images ``(N, C, H, W)``.
        data_name: the dataset they come from (picks the other digit set).
        artifact: see :func:`model_outputs`.
        far: precomputed :func:`far_ood_sets` (so two models are scored on the same images);
            default: built here with ``len(test_images)`` images each and ``seed``.

    Returns:
        ``{"available": True, "method", "sets": {set: {method: {"auroc", ...}}}, ...}``, or
        ``{"available": False, "reason": ...}`` for a model without a detector or embeddings.
    """
    detector, why = detector_beside(model.folder, model.drift_reference)
    if detector is None:
        return {"available": False, "reason": why}
    emb, logits = model_outputs(model, test_images, device, artifact=artifact)
    if emb is None:
        return {"available": False, "reason": "the model has no embedding output"}
    inside = method_scores(detector, emb, logits)
    sets, unavailable = far or far_ood_sets(model, len(test_images), seed=seed, data_name=data_name)
    outside = {
        k: method_scores(detector, *model_outputs(model, v, device, artifact=artifact))
        for k, v in sets.items()
    }
    return {
        "available": True,
        "method": detector.method,
        "detector": {**detector.describe(), "from": why},
        "in_distribution_images": len(test_images),
        "in_distribution_flag_rate": {
            m: float(np.mean(v > 1.0)) for m, v in inside.items() if m != "max_softmax"
        },
        "sets": ood_separation(inside, outside),
        "set_sizes": {k: len(v) for k, v in sets.items()},
        "baseline": "max_softmax: Hendrycks & Gimpel (2017), score = -max softmax probability",
        "unavailable_sets": dict(unavailable),
    }
