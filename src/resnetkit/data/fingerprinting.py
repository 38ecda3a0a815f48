"""A content fingerprint of a dataset, recorded with every trained model for lineage."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from resnetkit.data.dataset import ImageDataset

__all__ = ["fingerprint"]

_FORMAT_VERSION = 1


def fingerprint(dataset: ImageDataset) -> str:
    """Return the sha256 hex digest of a dataset's contents.

    It covers the image and label arrays (bytes, shapes and dtypes), the class names, and
    for ImageFolder data the file list; not where the data was read from. Two copies of the
    same data in different folders share a fingerprint; a changed pixel, label, class name
    or file name changes it.
    """
    header = {
        "version": _FORMAT_VERSION,
        "images": [list(dataset.images.shape), str(dataset.images.dtype)],
        "labels": [list(dataset.labels.shape), str(dataset.labels.dtype)],
        "classes": list(dataset.classes),
        "files": list(dataset.files),
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for tensor in (dataset.images, dataset.labels):
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).data)
    return digest.hexdigest()
