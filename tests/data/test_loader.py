from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetkit.data import BatchLoader, ImageDataset, epoch_permutation
from resnetkit.errors import ConfigError


def _loader(n: int, batch: int, **kwargs: Any) -> BatchLoader:
    images = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).to(torch.uint8)
    return BatchLoader(images, torch.arange(n), batch, **kwargs)


@given(st.integers(1, 300), st.integers(1, 64), st.integers(0, 5), st.integers(0, 9))
def test_an_epoch_serves_every_index_exactly_once(
    n: int, batch: int, seed: int, epoch: int
) -> None:
    loader = _loader(n, batch, seed=seed)
    served = torch.cat([labels for _, labels in loader.epoch(epoch)])
    assert sorted(served.tolist()) == list(range(n))
    assert len(list(loader.epoch(epoch))) == len(loader)


@given(st.integers(1, 300), st.integers(1, 64), st.integers(0, 9), st.integers(0, 3))
def test_batches_name_the_dataset_indices_of_what_they_serve(
    n: int, batch: int, epoch: int, start: int
) -> None:
    loader = _loader(n, batch, seed=1)
    start = min(start, len(loader))
    batches = list(loader.batches(epoch, start))
    assert len(batches) == len(loader) - start
    for indices, _, labels in batches:  # labels are the indices here (see _loader)
        assert torch.equal(indices, labels)


@given(st.integers(1, 300), st.integers(1, 64))
def test_drop_last_serves_only_full_batches(n: int, batch: int) -> None:
    if n < batch:
        with pytest.raises(ConfigError):
            _loader(n, batch, drop_last=True)
        return
    loader = _loader(n, batch, drop_last=True)
    sizes = [len(labels) for _, labels in loader.epoch(0)]
    assert sizes == [batch] * (n // batch)


@given(
    st.integers(1, 200),
    st.integers(1, 8),
    st.integers(1, 4),
    st.booleans(),
    st.integers(0, 3),
)
@settings(max_examples=60)
def test_union_of_rank_batches_equals_the_single_process_batch(
    n: int, per_rank: int, world_size: int, drop_last: bool, epoch: int
) -> None:
    batch = per_rank * world_size
    if drop_last and n < batch:
        return
    single = list(_loader(n, batch, seed=7, drop_last=drop_last).epoch(epoch))
    ranks = [
        list(
            _loader(n, batch, seed=7, drop_last=drop_last, rank=r, world_size=world_size).epoch(
                epoch
            )
        )
        for r in range(world_size)
    ]
    assert all(len(r) == len(single) for r in ranks)
    for step, (_, labels) in enumerate(single):
        union = torch.cat([ranks[r][step][1] for r in range(world_size)])
        assert torch.equal(union, labels)


@given(st.integers(2, 200), st.integers(1, 32), st.integers(0, 4), st.data())
def test_resuming_at_step_k_gives_the_rest_of_the_epoch(
    n: int, batch: int, epoch: int, data: st.DataObject
) -> None:
    full = [labels for _, labels in _loader(n, batch, seed=3).epoch(epoch)]
    k = data.draw(st.integers(0, len(full)))
    # A fresh loader, as after a restart: the order depends on (seed, epoch) alone.
    resumed = [labels for _, labels in _loader(n, batch, seed=3).epoch(epoch, start_step=k)]
    assert len(resumed) == len(full) - k
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[k:], strict=True))


@given(st.integers(2, 300), st.integers(1, 32), st.integers(1, 4), st.booleans(), st.data())
@settings(max_examples=60)
def test_a_given_order_serves_exactly_its_indices_split_across_ranks(
    n: int, per_rank: int, world: int, drop_last: bool, data: st.DataObject
) -> None:
    # A subset of the samples, as a hard-examples epoch trains on.
    subset = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=1, unique=True)))
    batch = per_rank * world
    ranks = [
        _loader(n, batch, rank=r, world_size=world, drop_last=drop_last and n >= batch)
        for r in range(world)
    ]
    steps = ranks[0].steps_for(subset.numel())
    served = [[idx.tolist() for idx, _, _ in loader.batches(3, order=subset)] for loader in ranks]
    assert all(len(s) == steps for s in served)
    union = [i for s in served for batch_idx in s for i in batch_idx]
    kept = subset.numel() - subset.numel() % batch if ranks[0].drop_last else subset.numel()
    assert sorted(union) == sorted(subset[:kept].tolist())


def test_order_depends_on_seed_and_epoch_only() -> None:
    assert torch.equal(epoch_permutation(1000, 1, 2), epoch_permutation(1000, 1, 2))
    assert not torch.equal(epoch_permutation(1000, 1, 2), epoch_permutation(1000, 1, 3))
    assert not torch.equal(epoch_permutation(1000, 1, 2), epoch_permutation(1000, 2, 2))
    torch.manual_seed(123)  # the global RNG plays no part
    a = epoch_permutation(1000, 1, 2)
    torch.manual_seed(456)
    assert torch.equal(a, epoch_permutation(1000, 1, 2))


def test_batches_keep_uint8_until_the_model_and_follow_storage_without_shuffle(
    fashion_train: ImageDataset,
) -> None:
    loader = BatchLoader(fashion_train.images, fashion_train.labels, 100, shuffle=False)
    images, labels = next(iter(loader.epoch(0)))
    assert images.dtype == torch.uint8 and images.shape == (100, 1, 28, 28)
    assert torch.equal(images, fashion_train.images[:100])
    assert torch.equal(labels, fashion_train.labels[:100])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 10, "world_size": 3},
        {"batch_size": 4, "rank": 2, "world_size": 2},
    ],
)
def test_contradictory_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    images = torch.zeros(20, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ConfigError):
        BatchLoader(images, torch.zeros(20, dtype=torch.int64), **kwargs)


def test_out_of_range_steps_are_config_errors() -> None:
    loader = _loader(10, 4)
    with pytest.raises(ConfigError):
        list(loader.epoch(0, start_step=4))
    with pytest.raises(ConfigError):
        loader.indices(0, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_are_delivered_on_the_requested_device(fashion_train: ImageDataset) -> None:
    loader = BatchLoader(fashion_train.images, fashion_train.labels, 64, device="cuda")
    cpu = BatchLoader(fashion_train.images, fashion_train.labels, 64)
    (images, labels), (cpu_images, _) = next(iter(loader.epoch(1))), next(iter(cpu.epoch(1)))
    assert images.device.type == "cuda" and labels.device.type == "cuda"
    assert torch.equal(images.cpu(), cpu_images)
    on_gpu = BatchLoader(fashion_train.images.cuda(), fashion_train.labels.cuda(), 64)
    assert torch.equal(next(iter(on_gpu.epoch(1)))[0].cpu(), cpu_images)
