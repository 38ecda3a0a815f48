"""Run a model over a dataset in eval mode and report its metrics.

:func:`map_batches` is the one inference loop over a dataset: ``uint8`` batches moved to the
target device, ``torch.inference_mode``, autocast at the precision
:mod:`~resnetkit.evaluate.precision` resolves, a progress bar. Everything that runs a model
over many images is built on it: :func:`predict_log_probs` (evaluation, validation during
training, the accuracy checks of quantization and the trade-off report, for a torch module or
any other backend), and :func:`predict_embeddings` (the drift reference). A torch module runs
in eval mode (BatchNorm uses its running statistics, dropout is off, so a sample's prediction
does not depend on the rest of its batch) and is returned to its modes and device afterwards.
:func:`evaluate_model` turns log-probabilities into an :class:`EvalReport`, which serialises
to ``eval.json`` and PNG plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from resnetkit.contract import EVAL_JSON
from resnetkit.data import ImageDataset, PreprocessingSpec, normalize, translate
from resnetkit.errors import ConfigError
from resnetkit.evaluate.metrics import (
    CalibrationBins,
    calibration_bins,
    confusion_matrix,
    negative_log_likelihood,
    per_class_metrics,
    topk_accuracy,
)
from resnetkit.evaluate.plots import plot_confusion_matrix, plot_reliability_diagram
from resnetkit.evaluate.precision import autocast, precision_name, resolve_device, resolve_precision
from resnetkit.fileio import atomic_write

__all__ = [
    "EVAL_JSON",
    "ClassResult",
    "EvalReport",
    "check_dataset_fits",
    "eval_mode",
    "evaluate_model",
    "map_batches",
    "predict_embeddings",
    "predict_log_probs",
    "report_from_log_probs",
    "tta_views",
]

#: A classifier: a torch module, or any callable from a normalised batch to logits.
Forward = nn.Module | Callable[[torch.Tensor], Any]

CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability_diagram.png"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own previous mode.

    Restoring per module (not ``model.train(previous)``) keeps deliberately frozen layers,
    such as BatchNorm held in eval mode during fine-tuning, as they were.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _model_device(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    # Evaluating on another device must not leave the caller's model moved.
    original = _model_device(model)
    if original == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(original)


@contextlib.contextmanager
def _prepared(model: Forward, device: torch.device) -> Iterator[None]:
    """A torch module in eval mode on ``device``; any other callable as it is."""
    if not isinstance(model, nn.Module):
        yield
        return
    with _on_device(model, device), eval_mode(model):
        yield


def _progress_bar(enabled: bool) -> Progress:
    # On stderr, so `--json` output on stdout stays machine-readable.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )


# Images per forward pass when the caller does not say. On 2 CPU cores a smaller batch keeps a
# small network's activations in the cache: the quickstart model's test evaluation with its
# six views took 10.3 s in batches of 256 against 12.7 s in batches of 512, and the drift
# reference's 5,000 embeddings 0.9 s against 1.4-1.7 s in batches of 1,024 (AVX2-only EPYC).
EVAL_BATCH = 256


def tta_views(images: torch.Tensor, tta_flip: bool, tta_shift: int) -> list[torch.Tensor]:
    """The test-time views of a batch of raw (not yet normalised) images.

    The batch itself, its mirror image with ``tta_flip``, and with ``tta_shift = s`` each of
    those shifted by ``(+s, +s)`` and ``(-s, -s)`` pixels, the edge filled with black pixels
    as the training crops pad: 1, 2, 3 or 6 views.
    """
    views = [images, images.flip(-1)] if tta_flip else [images]
    if tta_shift:
        views += [translate(v, d, d) for v in list(views) for d in (tta_shift, -tta_shift)]
    return views


def _as_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))


def _forward_log_probs(model: Forward, views: list[torch.Tensor]) -> torch.Tensor:
    """Log of the mean softmax over the views (log-space, so nothing underflows)."""
    outputs = []
    for x in views:
        logits = _as_tensor(model(x))
        if logits.dim() != 2:
            raise ConfigError("the model must return logits of shape (batch, classes)")
        outputs.append(torch.log_softmax(logits.float(), dim=1))  # (B, C)
    if len(outputs) == 1:
        return outputs[0]
    return torch.logsumexp(torch.stack(outputs), dim=0) - math.log(len(outputs))


def map_batches(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    images: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    description: str = "evaluating",
) -> tuple[torch.Tensor, ...]:
    """Run ``fn`` over ``images`` in batches: the one inference loop over a dataset.

    Args:
        fn: takes a raw batch (``images``' dtype, on ``device``) and returns a tuple of
            tensors, each with the batch as its first axis.
        images: ``(N, ...)`` on any device (usually ``uint8`` on the CPU).
        device: where each batch goes.
        batch_size: samples per call of ``fn``.
        dtype: autocast dtype (None: float32), see :mod:`~resnetkit.evaluate.precision`.
        progress: show a progress bar on stderr.
        description: the progress bar's label.

    Returns:
        Each of ``fn``'s outputs concatenated on the CPU (an empty tuple for no images).

    Raises:
        ConfigError: ``batch_size`` below 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}")
    total = int(images.shape[0])
    chunks: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode(), _progress_bar(progress) as bar:
        task = bar.add_task(description, total=total, rate="")
        start = time.perf_counter()
        for begin in range(0, total, batch_size):
            batch = images[begin : begin + batch_size].to(device, non_blocking=True)
            with autocast(device, dtype):
                out = fn(batch)
            chunks.append(tuple(t.cpu() for t in out))
            done = begin + batch.shape[0]
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:,.0f} img/s")
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))


def predict_log_probs(
    model: Forward,
    images: torch.Tensor,
    spec: PreprocessingSpec,
    *,
    device: str | torch.device | None = None,
    batch_size: int = EVAL_BATCH,
    tta_flip: bool = False,
    tta_shift: int = 0,
    precision: str = "fp32",
    num_classes: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Log-softmax outputs of a classifier on ``uint8`` images, in eval mode.

    A torch module's train/eval modes and device are restored afterwards; its weights and
    BatchNorm statistics are not changed.

    Args:
        model: a torch classifier returning logits ``(B, C)``, or any callable taking a
            normalised float batch and returning logits (e.g. an ONNX backend's ``predict``).
        images: ``uint8`` tensor ``(N, C, H, W)`` fitting ``spec``.
        spec: the model's preprocessing spec.
        device: where to run; the module's own device by default (the CPU for callables).
        batch_size: images per forward pass; does not change the result.
        tta_flip: also run on horizontally flipped images and average the softmaxes.
        tta_shift: also run on the images shifted by this many pixels (see :func:`tta_views`).
        precision: ``fp32`` (default, exact), ``bf16``, ``fp16`` or ``auto``, as in
            :func:`~resnetkit.evaluate.precision.resolve_precision`.
        num_classes: when given, the model must output this many classes.
        progress: show a rich progress bar on stderr.

    Returns:
        A float32 CPU tensor ``(N, C)`` of log-probabilities.

    Raises:
        ConfigError: a bad argument, or a model output that does not fit ``num_classes``.
    """
    if isinstance(tta_shift, bool) or not isinstance(tta_shift, int) or tta_shift < 0:
        raise ConfigError(f"tta_shift must be a number of pixels >= 0, got {tta_shift!r}")
    target = _target_device(model, device)
    dtype = resolve_precision(precision, target)

    def views_log_probs(batch: torch.Tensor) -> tuple[torch.Tensor]:
        # Each view is normalised as (B, C, H, W) float32 on `target`.
        views = [normalize(v, spec) for v in tta_views(batch, tta_flip, tta_shift)]
        log_probs = _forward_log_probs(model, views)
        if num_classes is not None and log_probs.shape[1] != num_classes:
            raise ConfigError(
                f"the model outputs {log_probs.shape[1]} classes but the dataset has "
                f"{num_classes}; evaluate it on the data it was trained for"
            )
        return (log_probs,)

    with _prepared(model, target):
        out = map_batches(
            views_log_probs, images, device=target, batch_size=batch_size, dtype=dtype,
            progress=progress,
        )  # fmt: skip
    return out[0] if out else torch.zeros(0, num_classes or 0)


def predict_embeddings(
    model: nn.Module,
    images: torch.Tensor,
    spec: PreprocessingSpec,
    *,
    device: str | torch.device | None = None,
    batch_size: int = EVAL_BATCH,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logits embeddings ``(N, D)`` and softmax outputs ``(N, K)`` of a zoo model.

    This is what drift detection compares live traffic with; it runs in float32 by default,
    for a faithful reference.
    """
    target = _target_device(model, device)
    zoo: Any = model

    def embed(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = zoo.forward_features(normalize(batch, spec))
        embedding = zoo.forward_head(features, pre_logits=True).float()
        return embedding, zoo.forward_head(features).float().softmax(dim=1)

    with _prepared(model, target):
        embeddings, probabilities = map_batches(
            embed, images, device=target, batch_size=batch_size,
            dtype=resolve_precision(precision, target),
        )  # fmt: skip
    return embeddings, probabilities


def _target_device(model: Forward, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return resolve_device(device)
    return _model_device(model) if isinstance(model, nn.Module) else torch.device("cpu")


def check_dataset_fits(dataset: ImageDataset, spec: PreprocessingSpec) -> None:
    """Check that a dataset's images have the channels and size a model expects.

    Raises:
        ConfigError: they do not, with both shapes in the message.
    """
    if dataset.channels != spec.channels or dataset.image_size != tuple(spec.size):
        have = f"{dataset.channels}x{dataset.image_size[0]}x{dataset.image_size[1]}"
        want = f"{spec.channels}x{spec.size[0]}x{spec.size[1]}"
        raise ConfigError(
            f"{dataset.name} ({dataset.split}) has {have} images but the model expects {want} "
            "(channels x height x width); evaluate on the data the model was trained for"
        )


@dataclasses.dataclass(frozen=True)
class ClassResult:
    """Precision, recall, F1 and support of one class."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """Metrics of one evaluation; :meth:`to_dict` is what ``eval.json`` holds.

    Attributes:
        top1: top-1 accuracy in [0, 1].
        top5: top-5 accuracy (top-``min(5, C)``).
        nll: mean negative log-likelihood in nats.
        ece: expected calibration error (15 equal-width bins).
        macro_precision: unweighted mean over classes; likewise ``macro_recall``, ``macro_f1``.
        per_class: one :class:`ClassResult` per class, in label order.
        confusion: ``(C, C)`` counts, rows = true class, columns = predicted class.
        calibration: the bins behind ``ece`` and the reliability diagram.
        num_samples: images evaluated.
        seconds: wall time of inference.
        images_per_s: ``num_samples / seconds``.
        dataset: dataset name; ``split`` its split.
        tta_flip: whether flip test-time augmentation was used.
        tta_shift: the test-time shift in pixels (0: none).
        precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: where the model ran.
    """

    top1: float
    top5: float
    nll: float
    ece: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: tuple[ClassResult, ...]
    confusion: tuple[tuple[int, ...], ...]
    calibration: CalibrationBins
    num_samples: int
    seconds: float
    images_per_s: float
    dataset: str = ""
    split: str = ""
    tta_flip: bool = False
    tta_shift: int = 0
    precision: str = "float32"
    device: str = "cpu"

    @property
    def labels(self) -> list[str]:
        """Class names in label order."""
        return [c.label for c in self.per_class]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "num_samples": self.num_samples,
            "num_classes": len(self.per_class),
            "top1": self.top1,
            "top5": self.top5,
            "nll": self.nll,
            "ece": self.ece,
            "macro": {
                "precision": self.macro_precision,
                "recall": self.macro_recall,
                "f1": self.macro_f1,
            },
            "per_class": [dataclasses.asdict(c) for c in self.per_class],
            "labels": self.labels,
            "confusion_matrix": [list(row) for row in self.confusion],
            "calibration": self.calibration.to_dict(),
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "tta_flip": self.tta_flip,
            "tta_shift": self.tta_shift,
            "precision": self.precision,
            "device": self.device,
        }

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``eval.json`` and ``plots/{confusion_matrix,reliability_diagram}.png``.

        A split other than ``test`` gets its own names (``eval-train.json``,
        ``plots/confusion_matrix-train.png``, ...), so it never overwrites the test results.
        Every file is written atomically.

        Returns:
            The paths written, keyed ``"json"``, ``"confusion_matrix"``, ``"reliability"``.
        """
        out = Path(directory)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        tag = f"-{self.split}" if self.split not in ("", "test") else ""
        json_path = out / EVAL_JSON.replace(".json", f"{tag}.json")
        atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        name = f"{self.dataset} {self.split}".strip()
        suffix = f" — {name}" if name else ""
        confusion_png = plot_confusion_matrix(
            self.confusion,
            self.labels,
            out / "plots" / CONFUSION_PNG.replace(".png", f"{tag}.png"),
            title=f"Confusion matrix{suffix} (top-1 {self.top1:.2%})",
        )
        reliability_png = plot_reliability_diagram(
            self.calibration,
            out / "plots" / RELIABILITY_PNG.replace(".png", f"{tag}.png"),
            title=f"Reliability{suffix}",
        )
        return {
            "json": json_path,
            "confusion_matrix": confusion_png,
            "reliability": reliability_png,
        }


def report_from_log_probs(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str],
    *,
    seconds: float = 0.0,
    **context: Any,
) -> EvalReport:
    """Compute every metric of an :class:`EvalReport` from log-probabilities.

    Args:
        log_probs: ``(N, C)`` log-softmax outputs.
        targets: ``(N,)`` class indices.
        labels: ``C`` class names.
        seconds: inference wall time, for the throughput figures.
        **context: the report's descriptive fields (``dataset``, ``split``, ``tta_flip``,
            ``precision``, ``device``).
    """
    num_classes = len(labels)
    probs = log_probs.double().exp()
    confusion = confusion_matrix(log_probs.argmax(dim=1), targets, num_classes)
    classes = per_class_metrics(confusion)
    per_class = tuple(
        ClassResult(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(
            labels, classes.precision, classes.recall, classes.f1, classes.support, strict=True
        )
    )
    bins = calibration_bins(probs, targets)
    n = int(targets.numel())
    return EvalReport(
        top1=topk_accuracy(log_probs, targets, k=1),
        top5=topk_accuracy(log_probs, targets, k=5),
        nll=negative_log_likelihood(log_probs, targets),
        ece=bins.ece,
        macro_precision=classes.macro_precision,
        macro_recall=classes.macro_recall,
        macro_f1=classes.macro_f1,
        per_class=per_class,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion.tolist()),
        calibration=bins,
        num_samples=n,
        seconds=seconds,
        images_per_s=n / seconds if seconds > 0 else 0.0,
        **context,
    )


def evaluate_model(
    model: Forward,
    dataset: ImageDataset,
    spec: PreprocessingSpec,
    *,
    device: str | torch.device | None = None,
    batch_size: int = EVAL_BATCH,
    tta_flip: bool = False,
    tta_shift: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> EvalReport:
    """Evaluate a classifier on a dataset: accuracy, per-class scores, calibration.

    The model always runs in eval mode under ``torch.inference_mode`` and is returned to its
    previous modes (and device) afterwards, so the result does not depend on ``batch_size``.

    Args:
        model: a classifier returning logits ``(B, C)`` with ``C = dataset.num_classes``: a
            torch module or any backend's ``predict``.
        dataset: ``uint8`` images and labels, e.g. from :func:`resnetkit.data.load_dataset`.
        spec: the model's preprocessing spec (from its ``model.json``).
        device: where to run; the model's own device by default.
        batch_size: images per forward pass.
        tta_flip: average the softmax over the image and its mirror image.
        tta_shift: also average over the views shifted by this many pixels.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto``, as in :func:`predict_log_probs`.
        progress: show a progress bar on stderr.

    Raises:
        ConfigError: the data does not fit the model, or ``tta_flip`` is asked for on data
            whose labels a mirror image changes (digits).
    """
    check_dataset_fits(dataset, spec)
    if len(dataset) == 0:
        raise ConfigError(f"{dataset.name} ({dataset.split}) is empty: nothing to evaluate")
    if tta_flip and not dataset.allows_hflip:
        raise ConfigError(
            f"tta_flip is wrong for {dataset.name}: a mirrored image can change its label"
        )
    target = _target_device(model, device)
    dtype = resolve_precision(precision, target)
    start = time.perf_counter()
    log_probs = predict_log_probs(
        model,
        dataset.images,
        spec,
        device=target,
        batch_size=batch_size,
        tta_flip=tta_flip,
        tta_shift=tta_shift,
        precision=precision,
        num_classes=dataset.num_classes,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    return report_from_log_probs(
        log_probs,
        dataset.labels,
        dataset.classes,
        seconds=seconds,
        dataset=dataset.name,
        split=dataset.split,
        tta_flip=tta_flip,
        tta_shift=tta_shift,
        precision=precision_name(dtype),
        device=str(target),
    )
