"""Grad-CAM: maps for every zoo model, the contract of ``explain``, overlays, and two sanity
checks on a trained model (the evidence is where the class is decided; randomised weights
change the maps) that fail when the maps do not follow the model.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr

from resnetkit.errors import ConfigError
from resnetkit.models import ClassifierModel, create_model, get_entry, list_models
from resnetkit.monitor.explain import (
    Explanation,
    explain,
    overlay,
    overlay_png,
    save_overlay,
    stage_names,
)
from tests.evaluate.helpers import one_thread

SIZE = 32  # image side, pixels
HALF = SIZE // 2
GAP_PX = 2  # patches keep this far from the midlines: a stride-4 map cannot split closer
TRAIN_IMAGES, TRAIN_EPOCHS, BATCH = 2048, 4, 64


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield


# --- a model trained to find a bright patch ---------------------------------------------------


@dataclass(frozen=True)
class QuadrantImages:
    """Noisy images whose class (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) is
    the quadrant holding a bright square of random size and position.

    Channels: the image, then the row and column coordinates in ``[-1, 1]`` (CoordConv).
    A network that pools globally can only tell position from its zero padding; without
    coordinates resnet8 learns the quadrant from context, and its last-stage maps peak in
    the patch's quadrant for only 5-30% of images: the check would then test the model's
    strategy rather than Grad-CAM. The smooth random background keeps "no patch here"
    from being a reliable cue.
    """

    x: torch.Tensor  # (N, 3, SIZE, SIZE)
    labels: torch.Tensor  # (N,)


def quadrant_images(n: int, seed: int) -> QuadrantImages:
    gen = torch.Generator().manual_seed(seed)
    image = 0.5 * torch.randn(n, 1, SIZE, SIZE, generator=gen)
    blobs = 0.6 * torch.randn(n, 1, 4, 4, generator=gen)  # a smooth background
    image += F.interpolate(blobs, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    labels = torch.randint(0, 4, (n,), generator=gen)
    side = torch.randint(4, 9, (n,), generator=gen)
    room = HALF - GAP_PX - side + 1  # positions that keep the patch inside its quadrant
    top = (labels // 2) * (HALF + GAP_PX) + (torch.rand(n, generator=gen) * room).long()
    left = (labels % 2) * (HALF + GAP_PX) + (torch.rand(n, generator=gen) * room).long()
    pos = torch.arange(SIZE)
    rows = (pos >= top[:, None]) & (pos < (top + side)[:, None])  # (N, SIZE)
    cols = (pos >= left[:, None]) & (pos < (left + side)[:, None])
    image[:, 0] += 2.0 * (rows[:, :, None] & cols[:, None, :])
    ramp = torch.linspace(-1, 1, SIZE)
    coords = [ramp.view(1, 1, SIZE, 1), ramp.view(1, 1, 1, SIZE)]
    x = torch.cat([image, *(c.expand(n, 1, SIZE, SIZE) for c in coords)], dim=1)
    return QuadrantImages(x, labels)


def quadrant_model(seed: int) -> ClassifierModel:
    torch.manual_seed(seed)
    model: ClassifierModel = create_model("resnet8", in_chans=3, num_classes=4)
    return model


def train_quadrant_model(data: QuadrantImages, seed: int = 0) -> ClassifierModel:
    """A plain SGD loop with a one-cycle schedule: 128 steps."""
    model = quadrant_model(seed)
    steps_per_epoch = len(data.labels) // BATCH
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, 0.2, total_steps=TRAIN_EPOCHS * steps_per_epoch, pct_start=0.25
    )
    model.train()
    for _ in range(TRAIN_EPOCHS):
        order = torch.randperm(len(data.labels))
        for step in range(steps_per_epoch):
            idx = order[step * BATCH : (step + 1) * BATCH]
            loss = F.cross_entropy(model(data.x[idx]), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> tuple[ClassifierModel, QuadrantImages]:
    """resnet8 trained on quadrant images, and 200 held-out ones."""
    with one_thread():
        model = train_quadrant_model(quadrant_images(TRAIN_IMAGES, seed=0))
    return model, quadrant_images(200, seed=1)


def peak_quadrants(maps: torch.Tensor) -> torch.Tensor:
    """The quadrant (0..3) of each map's maximum."""
    peak = maps.flatten(1).argmax(dim=1)
    rows, cols = peak // maps.shape[-1], peak % maps.shape[-1]
    return (rows >= HALF).long() * 2 + (cols >= HALF).long()


def mean_rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho between paired maps, averaged over the batch.

    A flat map (all zeros: nothing counts for the class) shares no ranking with any other,
    so its pair counts as 0 rather than undefined.
    """
    rhos = [
        0.0 if u.min() == u.max() or v.min() == v.max() else spearmanr(u.flatten(), v.flatten())[0]
        for u, v in zip(a.numpy(), b.numpy(), strict=True)
    ]
    return float(np.mean(rhos))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_peak_in_the_quadrant_that_decides_the_class(
    trained: tuple[ClassifierModel, QuadrantImages], method: str
) -> None:
    model, held_out = trained
    with torch.no_grad():
        accuracy = (model(held_out.x).argmax(dim=1) == held_out.labels).float().mean()
    assert accuracy >= 0.95, "the model must have learnt the task for the check to mean much"
    result = explain(model, held_out.x, target_class=held_out.labels, method=method)
    hit_rate = (peak_quadrants(result.maps) == held_out.labels).float().mean().item()
    assert hit_rate >= 0.9, f"{method}: the peak is in the patch's quadrant for {hit_rate:.0%}"
    # The control: maps for the other three classes must not simply outline the patch.
    wrong_rates = []
    for shift in (1, 2, 3):
        other = explain(
            model, held_out.x, target_class=(held_out.labels + shift) % 4, method=method
        )
        wrong_rates.append((peak_quadrants(other.maps) == held_out.labels).float().mean().item())
    assert np.mean(wrong_rates) <= hit_rate - 0.3, f"{method}: other classes {wrong_rates}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_change_when_the_weights_are_randomised(
    trained: tuple[ClassifierModel, QuadrantImages], method: str
) -> None:
    # Adebayo et al. (2018): maps that survive randomising the weights explain the input,
    # not the model. The control shows the measure can come out high.
    # Averaged over several random models: one draw alone scatters widely (Grad-CAM++ gave
    # rho from -0.1 to 0.5 over eight draws, as its weights keep only positive gradients
    # and a random net's activations already outline a bright patch).
    model, held_out = trained
    x, labels = held_out.x, held_out.labels
    maps = explain(model, x, target_class=labels, method=method).maps
    rhos = []
    for seed in range(100, 105):
        random_model = quadrant_model(seed).eval()
        random_maps = explain(random_model, x, target_class=labels, method=method).maps
        rhos.append(mean_rank_correlation(maps, random_maps))
    other = "gradcam++" if method == "gradcam" else "gradcam"
    control = explain(model, x, target_class=labels, method=other).maps
    assert mean_rank_correlation(maps, control) > 0.7
    assert np.mean(rhos) < 0.5, f"{method}: rank correlation with random weights {rhos}"


@pytest.mark.slow
def test_predicted_class_is_the_default_target(
    trained: tuple[ClassifierModel, QuadrantImages],
) -> None:
    model, held_out = trained
    x = held_out.x[:16]
    result = explain(model, x)
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    torch.testing.assert_close(result.target_classes, probs.argmax(dim=1))
    torch.testing.assert_close(result.probabilities, probs)
    best = probs.max(dim=1)
    expected = [
        [(c, pytest.approx(p))]
        for c, p in zip(best.indices.tolist(), best.values.tolist(), strict=True)
    ]
    assert result.topk(1) == expected


# --- the contract, on every zoo model -----------------------------------------------------------


def tiny_input(model: ClassifierModel, name: str, batch: int = 2) -> torch.Tensor:
    """Images just large enough for a 2x2 last stage (at least 32x32); sequences of 256."""
    size = get_entry(name).input_size
    gen = torch.Generator().manual_seed(0)
    if len(size) == 2:
        return torch.randn(batch, size[0], 256, generator=gen)
    side = max(SIZE, 2 * int(model.feature_info[-1]["reduction"]))
    return torch.randn(batch, size[0], side, side, generator=gen)


@pytest.mark.parametrize("name", list_models())
def test_every_spatial_zoo_model_gives_unit_maps_of_the_input_size(name: str) -> None:
    model = create_model(name, num_classes=3)
    if get_entry(name).input_kind == "vector":
        with pytest.raises(ConfigError, match="no spatial layout"):
            explain(model, torch.randn(2, *get_entry(name).input_size))
        return
    x = tiny_input(model, name)
    result = explain(model, x)
    assert result.maps.shape == (2, *x.shape[2:]) and result.maps.dtype == torch.float32
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    # Each map is stretched to a peak of 1, or all zeros where no location counts for the class.
    assert set(result.maps.flatten(1).amax(dim=1).tolist()) <= {0.0, 1.0}
    assert result.raw_maps.ndim == x.ndim - 1 and (result.raw_maps >= 0).all()
    assert result.probabilities.shape == (2, 3) and result.stage == stage_names(model)[-1]


def test_stages_are_chosen_by_name_or_index() -> None:
    model = create_model("resnet8", num_classes=3).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    assert stage_names(model) == ["layer1", "layer2", "layer3"]
    sides = {"layer1": 32, "layer2": 16, "layer3": 8}
    for stage, side in sides.items():
        result = explain(model, x, stage=stage)
        assert result.stage == stage and result.raw_maps.shape == (2, side, side)
        assert result.maps.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(
        explain(model, x, stage=1).raw_maps, explain(model, x, stage="layer2").raw_maps
    )
    assert explain(model, x, stage=-1).stage == "layer3"


def test_an_unknown_stage_is_refused_with_the_valid_names() -> None:
    model = create_model("resnet8", num_classes=3)
    x = torch.randn(1, 3, SIZE, SIZE)
    with pytest.raises(ConfigError, match="layer1, layer2, layer3"):
        explain(model, x, stage="layer4")
    with pytest.raises(ConfigError, match="valid stages"):
        explain(model, x, stage=3)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_the_hybrid_explains_its_trunk_and_its_transformer_tokens(pool: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet_hybrid", num_classes=3, depth=1, pool=pool).eval()
    x = torch.randn(2, 3, 128, 128)
    assert stage_names(model)[-1] == "norm"
    tokens = explain(model, x)
    assert tokens.raw_maps.shape == (2, 4, 4)  # tokens back on their 4x4 grid
    # A class-token head would leave the final norm's patch tokens without gradient.
    assert (tokens.raw_maps.flatten(1).amax(dim=1) > 0).all()
    assert explain(model, x, stage="layer3").raw_maps.shape == (2, 8, 8)


def test_one_dimensional_models_give_maps_along_the_sequence() -> None:
    model = create_model("resnet1d_18", num_classes=3, width=0.25)
    result = explain(model, torch.randn(2, 1, 300))
    assert result.maps.shape == (2, 300) and result.raw_maps.shape == (2, 10)


def reference_gradcam(model: ClassifierModel, x: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM written out on ``forward_intermediates`` (valid for a plain ResNet)."""
    fmap = model.forward_intermediates(x)[-1]
    score = model.forward_head(fmap)[:, target].sum()
    (grads,) = torch.autograd.grad(score, fmap)
    return F.relu((grads.mean(dim=(2, 3), keepdim=True) * fmap).sum(dim=1))


def test_the_requested_class_is_explained() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    for target in range(4):
        result = explain(model, x, target_class=target)
        assert result.target_classes.tolist() == [target] * 3
        torch.testing.assert_close(result.raw_maps, reference_gradcam(model, x, target))
    per_sample = explain(model, x, target_class=[2, 0, 3])
    assert per_sample.target_classes.tolist() == [2, 0, 3]
    torch.testing.assert_close(per_sample.raw_maps[1], reference_gradcam(model, x[1:2], 0)[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_class": 4}, "not a class index"),
        ({"target_class": -1}, "not a class index"),
        ({"target_class": [0, 1, 2]}, "3 entries for a batch of 2"),
        ({"target_class": 1.5}, "not a class index"),
        ({"method": "lime"}, "gradcam, gradcam\\+\\+"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_runs(
    kwargs: dict[str, object], message: str
) -> None:
    model = create_model("resnet8", num_classes=4)
    with pytest.raises(ConfigError, match=message):
        explain(model, torch.randn(2, 3, SIZE, SIZE), **kwargs)  # type: ignore[arg-type]


def test_an_input_on_another_device_is_refused() -> None:
    model = create_model("resnet8", num_classes=4, device="meta")
    with pytest.raises(ConfigError, match="move one to the other"):
        explain(model, torch.randn(1, 3, SIZE, SIZE))


def no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks for m in model.modules())


def test_modes_gradients_and_hooks_are_left_as_they_were() -> None:
    model = create_model("resnet8", num_classes=4, drop_rate=0.5)
    model.train()
    model.layer2.eval()  # a mixed state must come back mixed
    model.layer1.requires_grad_(False)  # frozen parameters are fine too
    before = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for name, param in model.named_parameters():
        param.grad = before[name].clone()
    modes = {n: m.training for n, m in model.named_modules()}
    with torch.inference_mode():  # as a server would call it
        result = explain(model, torch.randn(2, 3, SIZE, SIZE))
    assert result.maps.shape == (2, SIZE, SIZE)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, before[name], rtol=0, atol=0)
    assert no_hooks(model)
    with pytest.raises(ConfigError, match="C=3"):  # the model's own check, mid-forward
        explain(model, torch.randn(2, 1, SIZE, SIZE))
    assert no_hooks(model) and {n: m.training for n, m in model.named_modules()} == modes


def test_maps_are_the_same_in_train_and_eval_mode() -> None:
    # Explanations run in eval mode, so the mode the caller left the model in does not matter.
    model = create_model("resnet8", num_classes=4, drop_rate=0.5)
    x = torch.randn(2, 3, SIZE, SIZE)
    train_maps = explain(model.train(), x).raw_maps
    torch.testing.assert_close(explain(model.eval(), x).raw_maps, train_maps)


def test_topk_lists_the_most_probable_classes() -> None:
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    result = Explanation(
        maps=torch.zeros(2, 4, 4),
        raw_maps=torch.zeros(2, 1, 1),
        target_classes=torch.tensor([1, 0]),
        probabilities=probs,
        stage="layer3",
        method="gradcam",
    )
    top = result.topk(2)
    assert [[c for c, _ in row] for row in top] == [[1, 2], [0, 2]]
    assert top[0][0][1] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match=r"\[1, 3\]"):
        result.topk(4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_maps_are_computed_on_the_inputs_device() -> None:
    model = create_model("resnet8", num_classes=4).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    cpu = explain(model, x)
    gpu = explain(model.cuda(), x.cuda())
    assert gpu.maps.device.type == "cuda" and gpu.probabilities.device.type == "cuda"
    torch.testing.assert_close(gpu.raw_maps.cpu(), cpu.raw_maps, rtol=1e-3, atol=1e-3)


# --- overlays -----------------------------------------------------------------------------------


def a_photo(height: int = 48, width: int = 64) -> np.ndarray:
    """A real photograph (scikit-image's astronaut) when available, else a gradient."""
    try:
        from skimage import data
    except ImportError:
        ramp = np.linspace(0, 255, width, dtype=np.float32)
        return np.repeat(np.tile(ramp, (height, 1))[..., None], 3, axis=2).astype(np.uint8)
    photo = Image.fromarray(data.astronaut()).resize((width, height))
    return np.asarray(photo)


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_overlay_resizes_the_map_to_any_image(channels: int | None) -> None:
    photo = a_photo()
    image = {None: photo[..., 0], 1: photo[..., :1], 3: photo}.get(
        channels, np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    )
    cam = torch.rand(7, 9)
    out = overlay(image, cam)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_overlay_blends_image_and_colour_map() -> None:
    image = a_photo()
    cam = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(overlay(image, cam, alpha=0.0), image)
    only_map = overlay(image, np.ones((4, 4), np.float32), alpha=1.0, cmap="jet")
    np.testing.assert_array_equal(only_map, np.broadcast_to([128, 0, 0], only_map.shape))
    half = overlay(image, cam, alpha=0.5).astype(int)
    assert np.abs(half - image).max() > 20  # the map shows
    assert overlay(Image.fromarray(image), cam).shape == image.shape


@pytest.mark.parametrize(
    ("image", "cam", "kwargs", "message"),
    [
        (np.zeros((8, 8), np.float32), np.zeros((2, 2)), {}, "uint8"),
        (np.zeros((8, 8, 2), np.uint8), np.zeros((2, 2)), {}, "H, W, 3"),
        (np.zeros((8, 8), np.uint8), np.zeros((2, 2, 2)), {}, "one 2-D map"),
        (np.zeros((8, 8), np.uint8), np.full((2, 2), np.nan), {}, "NaN"),
        (np.zeros((8, 8), np.uint8), np.zeros((2, 2)), {"alpha": 1.5}, "alpha"),
        (np.zeros((8, 8), np.uint8), np.zeros((2, 2)), {"cmap": "nope"}, "colormap"),
    ],
)
def test_overlay_refuses_what_it_cannot_draw(
    image: np.ndarray, cam: np.ndarray, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        overlay(image, cam, **kwargs)  # type: ignore[arg-type]


def test_overlay_png_decodes_to_the_overlay() -> None:
    image, cam = a_photo(), np.eye(5, dtype=np.float32)
    data = overlay_png(image, cam)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and decoded.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), overlay(image, cam))


def test_save_overlay_writes_a_png_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = save_overlay(tmp_path / "out" / "cam.png", a_photo(), np.eye(4))
    assert target.read_bytes() == overlay_png(a_photo(), np.eye(4))
    assert [p.name for p in target.parent.iterdir()] == ["cam.png"]
    with pytest.raises(ConfigError, match=r"\.png"):
        save_overlay(tmp_path / "cam.jpg", a_photo(), np.eye(4))
    assert not (tmp_path / "cam.jpg").exists()
