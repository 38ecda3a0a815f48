"""The pipeline's data: the base training set mixed with labelled production images, and
the frozen sets the gate evaluates on.

``export-feedback`` writes ``DIR/train/<class>/``, ``DIR/holdout/<class>/`` and
``DIR/manifest.json``, whose ``classes`` maps each class folder to the label index the
production model answered with. The training part is mixed into the base training set
(repeated so that it makes up ``feedback_fraction`` of the mix) and written as IDX files,
the format the base source reads, so the class order, names and the trainer stay the same;
the holdout part is a gate set of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from resnetkit.data import ImageDataset

__all__ = ["MIXABLE", "FeedbackData", "load_feedback", "mix_counts", "write_mixed_idx"]

#: Base datasets a feedback export can be mixed into (their source reads IDX files).
MIXABLE = ("fashion-mnist", "mnist")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class FeedbackData:
    """An export's two parts as datasets in the base label space, and its manifest."""

    def __init__(
        self, root: Path, train: ImageDataset | None, holdout: ImageDataset | None,
        manifest: dict[str, Any],
    ) -> None:  # fmt: skip
        self.root, self.train, self.holdout, self.manifest = root, train, holdout, manifest


def _class_index(folder: str, manifest: dict[str, Any], classes: tuple[str, ...]) -> int:
    """The label of a class folder: the manifest's index, checked against the base classes."""
    mapped = manifest.get("classes", {})
    if folder in mapped:
        index = int(mapped[folder])
    elif folder in classes:
        index = classes.index(folder)
    elif folder.isdigit():
        index = int(folder)
    else:
        raise DataError(f"feedback class folder {folder!r} is not one of {', '.join(classes)}")
    if not 0 <= index < len(classes):
        raise DataError(
            f"feedback class {folder!r} has label {index}, outside the {len(classes)} classes"
        )
    if folder not in (classes[index], str(index)) and folder != classes[index].replace("/", "_"):
        raise DataError(
            f"feedback class {folder!r} is label {index}, but label {index} is "
            f"{classes[index]!r}: the export is for another model"
        )
    return index


def _read_part(
    root: Path, part: str, manifest: dict[str, Any], like: ImageDataset
) -> ImageDataset | None:
    import numpy as np
    import torch

    from resnetkit.data import ImageDataset
    from resnetkit.data.images import image_to_array, open_image

    folder = root / part
    if not folder.is_dir():
        return None
    arrays, labels, files = [], [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        index = _class_index(class_dir.name, manifest, like.classes)
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            arrays.append(image_to_array(open_image(image), like.image_size, like.channels))
            labels.append(index)
            files.append(str(image.relative_to(root)))
    if not arrays:
        return None
    return ImageDataset(
        images=torch.from_numpy(np.stack(arrays)),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=like.classes,
        name=f"feedback-{part}",
        split=part,
        allows_hflip=like.allows_hflip,
        source=str(root),
        files=tuple(files),
    )


def load_feedback(root: str | os.PathLike[str], like: ImageDataset) -> FeedbackData:
    """Read an export as datasets shaped and labelled like ``like`` (the base set).

    Raises:
        DataError: a missing folder or manifest, a class the base set does not have, or an
            unreadable image (named).
    """
    folder = Path(root)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(
            f"data.feedback {folder}: no manifest.json there; give a folder written by "
            "`resnetkit data export-feedback`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{manifest_path} is not JSON: {exc}") from exc
    train = _read_part(folder, "train", manifest, like)
    holdout = _read_part(folder, "holdout", manifest, like)
    if train is None and holdout is None:
        raise DataError(f"data.feedback {folder} holds no labelled images")
    return FeedbackData(folder, train, holdout, manifest)


def mix_counts(base: int, feedback: int, fraction: float) -> int:
    """How many times each feedback image is repeated so that the feedback images make up
    ``fraction`` of the mix (at least once): ``k * f / (base + k * f) ~ fraction``."""
    if feedback == 0:
        return 0
    return max(1, round(fraction * base / ((1 - fraction) * feedback)))


def _write_idx(path: Path, array: Any) -> None:
    """One IDX file: the magic (unsigned bytes, ``ndim``), the dimensions, the bytes."""
    import numpy as np

    data = np.ascontiguousarray(array, dtype=np.uint8)
    with path.open("wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x08, data.ndim))
        fh.write(struct.pack(f">{data.ndim}I", *data.shape))
        fh.write(data.tobytes())


def write_mixed_idx(
    target: Path, base_train: ImageDataset, base_test: ImageDataset, feedback: ImageDataset,
    fraction: float,
) -> dict[str, int]:  # fmt: skip
    """Write the base training set plus the repeated feedback images, and the base test set,
    as the four IDX files of ``target`` (whole or not at all).

    Returns:
        Counts: ``base``, ``feedback`` (distinct images), ``repeats`` and ``train`` (the mix).

    Raises:
        ConfigError: the base images are not single-channel (IDX holds grey images).
    """
    import torch

    if base_train.channels != 1:
        raise ConfigError(f"mixing feedback needs a grey base dataset ({', '.join(MIXABLE)})")
    repeats = mix_counts(len(base_train), len(feedback), fraction)
    images = torch.cat([base_train.images, feedback.images.repeat(repeats, 1, 1, 1)])
    labels = torch.cat([base_train.labels, feedback.labels.repeat(repeats)])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for stem, array in (
            ("train-images-idx3-ubyte", images[:, 0].numpy()),
            ("train-labels-idx1-ubyte", labels.numpy()),
            ("t10k-images-idx3-ubyte", base_test.images[:, 0].numpy()),
            ("t10k-labels-idx1-ubyte", base_test.labels.numpy()),
        ):
            _write_idx(staging / stem, array)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    counts = {"base": len(base_train), "feedback": len(feedback), "repeats": repeats}
    counts["train"] = counts["base"] + counts["feedback"] * repeats
    return counts
