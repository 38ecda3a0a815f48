from __future__ import annotations

import dataclasses

import torch

from resnetkit.data import ImageDataset, fingerprint


def test_fingerprint_is_stable_and_ignores_where_data_came_from(
    fashion_train: ImageDataset,
) -> None:
    digest = fingerprint(fashion_train)
    assert len(digest) == 64 and int(digest, 16) >= 0
    copy = dataclasses.replace(fashion_train, images=fashion_train.images.clone(), source="/x")
    assert fingerprint(copy) == digest


def test_any_change_of_content_changes_the_fingerprint(fashion_train: ImageDataset) -> None:
    ds = fashion_train.subset(torch.arange(50))
    base = fingerprint(ds)
    pixel = ds.images.clone()
    pixel[7, 0, 3, 3] ^= 1
    label = ds.labels.clone()
    label[0] = (label[0] + 1) % 10
    variants = [
        dataclasses.replace(ds, images=pixel),
        dataclasses.replace(ds, labels=label),
        dataclasses.replace(ds, classes=(*ds.classes[:-1], "Boot")),
        dataclasses.replace(ds, files=tuple(f"{i}.png" for i in range(50))),
        ds.subset(torch.arange(49)),
    ]
    digests = {fingerprint(v) for v in variants}
    assert base not in digests and len(digests) == len(variants)
