from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetkit.data import (
    AugmentSpec,
    ImageDataset,
    PreprocessingSpec,
    alternating_flips,
    augment_batch,
    compute_preprocessing,
    cutmix,
    mixup,
    normalize,
    random_crop,
    random_erasing,
    random_hflip,
    translate,
)
from resnetkit.errors import ConfigError

batches = st.tuples(
    st.integers(1, 6), st.sampled_from([1, 3]), st.integers(1, 12), st.integers(1, 12)
)
dtypes = st.sampled_from([torch.uint8, torch.float32])


def _batch(shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).to(dtype)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@given(batches, dtypes, st.integers(0, 5), st.integers(0, 2**31))
def test_crop_keeps_shape_dtype_and_takes_a_window_of_the_padded_image(
    shape: tuple[int, int, int, int], dtype: torch.dtype, padding: int, seed: int
) -> None:
    x = _batch(shape, dtype)
    out = random_crop(x, padding, _gen(seed))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (padding,) * 4)
    _, _, h, w = x.shape
    for i in range(x.shape[0]):
        windows = [
            torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
        ]
        assert any(windows)


@given(batches, st.integers(0, 3), st.integers(1, 12), st.integers(0, 2**31))
def test_crop_of_a_given_size_takes_a_window_of_that_size_of_the_padded_image(
    shape: tuple[int, int, int, int], padding: int, size: int, seed: int
) -> None:
    x = _batch(shape, torch.uint8)
    _, _, h, w = x.shape
    if size > min(h, w) + 2 * padding:
        with pytest.raises(ConfigError, match="does not fit"):
            random_crop(x, padding, _gen(seed), size=size)
        return
    out = random_crop(x, padding, _gen(seed), size=size)
    assert out.shape == (*x.shape[:2], size, size)
    padded = F.pad(x, (padding,) * 4)
    for i in range(x.shape[0]):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + size, dx : dx + size])
            for dy in range(h + 2 * padding - size + 1)
            for dx in range(w + 2 * padding - size + 1)
        )


def test_augment_batch_crops_to_the_spec_crop_size(fashion_train: ImageDataset) -> None:
    spec = AugmentSpec(crop_padding=2, crop_size=20, hflip=True)
    batch = augment_batch(
        fashion_train.images[:8], fashion_train.labels[:8], spec, _spec(), _gen(0)
    )
    assert batch.images.shape == (8, 1, 20, 20)


@given(batches, dtypes, st.integers(0, 2**31))
def test_flip_keeps_shape_and_each_image_is_itself_or_its_mirror(
    shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int
) -> None:
    x = _batch(shape, dtype)
    out = random_hflip(x, _gen(seed))
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(x.shape[0]):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))


def test_flip_probability_extremes() -> None:
    x = _batch((8, 1, 5, 5), torch.uint8)
    assert torch.equal(random_hflip(x, _gen(0), p=0.0), x)
    assert torch.equal(random_hflip(x, _gen(0), p=1.0), x.flip(3))


@given(batches, st.integers(0, 2**31))
@settings(max_examples=50)
def test_erasing_fills_one_rectangle_per_image_within_the_area_range(
    shape: tuple[int, int, int, int], seed: int
) -> None:
    x = _batch(shape, torch.float32) + 1.0  # no zeros before erasing
    out = random_erasing(x, _gen(seed), p=1.0, value=0.0)
    assert out.shape == x.shape
    for i in range(x.shape[0]):
        erased = (out[i] == 0).all(dim=0)
        rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
        assert rows.numel() > 0
        box = erased[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # a solid rectangle


def test_erasing_with_zero_probability_changes_nothing() -> None:
    x = _batch((4, 3, 8, 8), torch.float32)
    assert torch.equal(random_erasing(x, _gen(1), p=0.0), x)


def test_mixup_blends_with_a_partner_and_reports_lam() -> None:
    x = _batch((16, 1, 4, 4), torch.float32)
    y = torch.arange(16)
    mixed, partner_y, lam = mixup(x, y, 0.4, _gen(3))
    assert 0.0 <= lam <= 1.0
    partner = partner_y  # labels are indices here, so they name the partner image
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner], atol=1e-4)
    with pytest.raises(ConfigError):
        mixup(x.to(torch.uint8), y, 0.4, _gen(3))


@given(st.integers(0, 2**31))
@settings(max_examples=30)
def test_cutmix_lam_is_the_fraction_of_pixels_kept(seed: int) -> None:
    x = torch.arange(8).float().view(8, 1, 1, 1).expand(8, 2, 10, 12).contiguous()
    y = torch.arange(8)
    mixed, partner, lam = cutmix(x, y, 1.0, _gen(seed))
    kept = (mixed == x).all(dim=1).float().mean(dim=(1, 2))  # per image
    changed = partner != y
    assert torch.allclose(kept[changed], torch.full_like(kept[changed], lam))


def _spec() -> PreprocessingSpec:
    return PreprocessingSpec(size=(28, 28), channels=1, mean=(0.286,), std=(0.353,))


def test_augment_batch_is_reproducible_bit_for_bit(fashion_train: ImageDataset) -> None:
    spec = AugmentSpec(
        crop_padding=2, hflip=True, erase_prob=0.5, mixup_alpha=0.2, cutmix_alpha=1.0
    )
    images, labels = fashion_train.images[:64], fashion_train.labels[:64]
    runs = [augment_batch(images, labels, spec, _spec(), _gen(11)) for _ in range(2)]
    assert torch.equal(runs[0].images, runs[1].images)
    assert torch.equal(runs[0].partner_targets, runs[1].partner_targets)
    assert runs[0].lam == runs[1].lam
    other = augment_batch(images, labels, spec, _spec(), _gen(12))
    assert not torch.equal(other.images, runs[0].images)


def test_no_augmentation_is_plain_normalisation(fashion_train: ImageDataset) -> None:
    images, labels = fashion_train.images[:8], fashion_train.labels[:8]
    pre = compute_preprocessing(fashion_train)
    batch = augment_batch(images, labels, AugmentSpec(), pre, _gen(0))
    assert torch.equal(batch.images, normalize(images, pre)) and batch.lam == 1.0
    logits = torch.randn(8, 10)
    assert torch.allclose(batch.cross_entropy(logits), F.cross_entropy(logits, labels))


def test_mixed_loss_weights_both_targets() -> None:
    logits = torch.randn(4, 3)
    a, b = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    from resnetkit.data import AugmentedBatch

    batch = AugmentedBatch(torch.zeros(4, 1, 2, 2), a, b, 0.25)
    expected = 0.25 * F.cross_entropy(logits, a) + 0.75 * F.cross_entropy(logits, b)
    assert torch.allclose(batch.cross_entropy(logits), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_padding": -1},
        {"crop_size": 0},
        {"erase_prob": 1.5},
        {"mixup_alpha": -0.1},
        {"mix_prob": 2},
    ],
)
def test_invalid_augment_specs_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AugmentSpec(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_a_cpu_generator_matches_cpu(fashion_train: ImageDataset) -> None:
    spec = AugmentSpec(
        crop_padding=2, hflip=True, erase_prob=0.5, mixup_alpha=0.2, cutmix_alpha=1.0
    )
    images, labels = fashion_train.images[:64], fashion_train.labels[:64]
    cpu = augment_batch(images, labels, spec, _spec(), _gen(5))
    gpu = augment_batch(images.cuda(), labels.cuda(), spec, _spec(), _gen(5))
    assert gpu.images.device.type == "cuda"
    assert torch.allclose(gpu.images.cpu(), cpu.images, atol=1e-5)
    assert torch.equal(gpu.partner_targets.cpu(), cpu.partner_targets)


@settings(max_examples=40, deadline=None)
@given(dy=st.integers(-3, 3), dx=st.integers(-3, 3))
def test_translate_moves_every_pixel_and_fills_the_edge(dy: int, dx: int) -> None:
    images = torch.arange(2 * 1 * 6 * 7, dtype=torch.int64).view(2, 1, 6, 7) + 1
    out = translate(images, dy, dx)
    assert out.shape == images.shape
    for y in range(6):
        for x in range(7):
            source_y, source_x = y - dy, x - dx
            inside = 0 <= source_y < 6 and 0 <= source_x < 7
            expected = images[:, :, source_y, source_x] if inside else torch.zeros(2, 1)
            assert torch.equal(out[:, :, y, x], expected)


@given(
    st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=50),
    st.integers(0, 50),
    st.integers(0, 2**31 - 1),
)
def test_alternating_flips_show_each_image_both_ways_in_consecutive_epochs(
    indices: list[int], epoch: int, seed: int
) -> None:
    idx = torch.tensor(indices)
    now, after, later = (alternating_flips(idx, e, seed) for e in (epoch, epoch + 1, epoch + 2))
    assert now.dtype == torch.bool and now.shape == idx.shape
    assert torch.equal(after, ~now)
    assert torch.equal(later, now)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_alternating_flips_flip_about_half_of_any_run_of_indices(seed: int) -> None:
    flips = alternating_flips(torch.arange(10_000), 0, seed)
    assert 0.45 < flips.float().mean() < 0.55
    for block in flips.view(100, 100):  # also within small blocks, e.g. one sorted class
        assert 0.25 < block.float().mean() < 0.75
    assert not torch.equal(flips, alternating_flips(torch.arange(10_000), 0, seed + 1))


def test_augment_batch_flips_exactly_the_images_it_is_told_to() -> None:
    images = _batch((4, 1, 6, 6), torch.uint8)
    spec = PreprocessingSpec(size=(6, 6), channels=1, mean=(0.0,), std=(1.0,))
    flips = torch.tensor([True, False, False, True])
    batch = augment_batch(
        images, torch.zeros(4, dtype=torch.long), AugmentSpec(hflip=True), spec, _gen(0), flips
    )
    expected = torch.where(flips[:, None, None, None], images.flip(3), images)
    torch.testing.assert_close(batch.images, expected.float() / 255)
