"""Run a model over a dataset in eval mode and report its metrics.

:func:`predict_log_probs` is the one inference loop: the model in eval mode (BatchNorm uses
its running statistics, dropout is off, so a sample's prediction does not depend on the rest
of its batch), ``torch.inference_mode``, ``uint8`` batches normalised on the target device
with the model's :class:`~resnetkit.data.PreprocessingSpec`. :func:`evaluate_model` turns its
output into an :class:`EvalReport`, which serialises to ``eval.json`` and PNG plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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

from resnetkit.config import atomic_write
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

__all__ = [
    "EVAL_JSON",
    "ClassResult",
    "EvalReport",
    "check_dataset_fits",
    "eval_mode",
    "evaluate_model",
    "predict_log_probs",
    "report_from_log_probs",
]

EVAL_JSON = "eval.json"
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


def _autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means full float32."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp is None:
        return None  # CPU default: float32, exact and the same on every run
    if device.type == "cpu":
        return torch.bfloat16
    raise ConfigError(f"mixed precision is supported on cpu and cuda, not {device.type}")


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


def _forward_log_probs(model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Log of the mean softmax over the views (log-space, so nothing underflows)."""
    outputs = []
    for x in views:
        logits = model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ConfigError("the model must return logits of shape (batch, classes)")
        outputs.append(torch.log_softmax(logits.float(), dim=1))  # (B, C)
    if len(outputs) == 1:
        return outputs[0]
    return torch.logsumexp(torch.stack(outputs), dim=0) - math.log(len(outputs))


def predict_log_probs(
    model: nn.Module,
    images: torch.Tensor,
    spec: PreprocessingSpec,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 512,
    tta_flip: bool = False,
    tta_shift: int = 0,
    amp: bool | None = None,
    num_classes: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Log-softmax outputs of ``model`` on ``uint8`` images, in eval mode.

    The model's train/eval modes and device are restored afterwards; its weights and
    BatchNorm statistics are not changed.

    Args:
        model: a classifier returning logits ``(B, C)``.
        images: ``uint8`` tensor ``(N, C, H, W)`` fitting ``spec``.
        spec: the model's preprocessing spec.
        device: where to run; the model's own device by default.
        batch_size: images per forward pass; does not change the result.
        tta_flip: also run on horizontally flipped images and average the softmaxes.
        tta_shift: also run on the images shifted by this many pixels (see :func:`tta_views`).
        amp: autocast: None = bf16/fp16 on CUDA and float32 elsewhere, True = bf16 on CPU
            (bf16, or fp16 where unsupported, on CUDA), False = float32.
        num_classes: when given, the model must output this many classes.
        progress: show a rich progress bar on stderr.

    Returns:
        A float32 CPU tensor ``(N, C)`` of log-probabilities.

    Raises:
        ConfigError: a bad argument, or a model output that does not fit ``num_classes``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(tta_shift, bool) or not isinstance(tta_shift, int) or tta_shift < 0:
        raise ConfigError(f"tta_shift must be a number of pixels >= 0, got {tta_shift!r}")
    target = torch.device(device) if device is not None else _model_device(model)
    dtype = _autocast_dtype(target, amp)
    total = int(images.shape[0])
    outputs: list[torch.Tensor] = []
    with (
        _on_device(model, target),
        eval_mode(model),
        torch.inference_mode(),
        _progress_bar(progress) as bar,
    ):
        task = bar.add_task("evaluating", total=total, rate="")
        start = time.perf_counter()
        for begin in range(0, total, batch_size):
            batch = images[begin : begin + batch_size].to(target, non_blocking=True)
            # Each view is normalised as (B, C, H, W) float32 on `target`.
            views = [normalize(v, spec) for v in tta_views(batch, tta_flip, tta_shift)]
            with torch.autocast(target.type, dtype=dtype, enabled=dtype is not None):
                log_probs = _forward_log_probs(model, views)
            if num_classes is not None and log_probs.shape[1] != num_classes:
                raise ConfigError(
                    f"the model outputs {log_probs.shape[1]} classes but the dataset has "
                    f"{num_classes}; evaluate it on the data it was trained for"
                )
            outputs.append(log_probs.cpu())
            done = begin + batch.shape[0]
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:,.0f} img/s")
    if not outputs:
        return torch.zeros(0, num_classes or 0)
    return torch.cat(outputs)


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

        Every file is written atomically.

        Returns:
            The paths written, keyed ``"json"``, ``"confusion_matrix"``, ``"reliability"``.
        """
        out = Path(directory)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        json_path = out / EVAL_JSON
        atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        name = f"{self.dataset} {self.split}".strip()
        suffix = f" — {name}" if name else ""
        confusion_png = plot_confusion_matrix(
            self.confusion,
            self.labels,
            out / "plots" / CONFUSION_PNG,
            title=f"Confusion matrix{suffix} (top-1 {self.top1:.2%})",
        )
        reliability_png = plot_reliability_diagram(
            self.calibration, out / "plots" / RELIABILITY_PNG, title=f"Reliability{suffix}"
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
    model: nn.Module,
    dataset: ImageDataset,
    spec: PreprocessingSpec,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 512,
    tta_flip: bool = False,
    tta_shift: int = 0,
    amp: bool | None = None,
    progress: bool = True,
) -> EvalReport:
    """Evaluate a classifier on a dataset: accuracy, per-class scores, calibration.

    The model always runs in eval mode under ``torch.inference_mode`` and is returned to its
    previous modes (and device) afterwards, so the result does not depend on ``batch_size``.

    Args:
        model: a classifier returning logits ``(B, C)`` with ``C = dataset.num_classes``.
        dataset: ``uint8`` images and labels, e.g. from :func:`resnetkit.data.load_dataset`.
        spec: the model's preprocessing spec (from its ``model.json``).
        device: where to run; the model's own device by default.
        batch_size: images per forward pass.
        tta_flip: average the softmax over the image and its mirror image.
        tta_shift: also average over the views shifted by this many pixels.
        amp: mixed precision, as in :func:`predict_log_probs`.
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
    target = torch.device(device) if device is not None else _model_device(model)
    dtype = _autocast_dtype(target, amp)
    start = time.perf_counter()
    log_probs = predict_log_probs(
        model,
        dataset.images,
        spec,
        device=target,
        batch_size=batch_size,
        tta_flip=tta_flip,
        tta_shift=tta_shift,
        amp=amp,
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
        precision=str(dtype or torch.float32).removeprefix("torch."),
        device=str(target),
    )
