"""Loading checkpoints: formats, prefixes, timm names, channel and head adaptation, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resnetkit import CheckpointError, create_model, load_pretrained
from resnetkit.models.compat import adapt_input_conv, group_keys


def _trained_like(name: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    with torch.no_grad():  # give BN non-trivial statistics so a wrong load shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("prefix", ["", "module.", "model.", "backbone.", "module.model."])
def test_pth_with_wrapper_prefixes_loads_and_gives_the_same_logits(
    tmp_path: Path, prefix: str
) -> None:
    src = _trained_like("resnet18")
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {prefix + k: v for k, v in src.state_dict().items()}}, path)
    dst = create_model("resnet18").eval()
    report = load_pretrained(dst, path)
    assert report.ok
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))


def test_safetensors_loads(tmp_path: Path) -> None:
    src = _trained_like("resnet20")
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    dst = create_model("resnet20").eval()
    assert load_pretrained(dst, path).loaded == len(src.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))


def test_timm_head_and_se_names_are_mapped(tmp_path: Path) -> None:
    src = _trained_like("seresnet50")
    renamed = {}
    for key, value in src.state_dict().items():
        key = key.replace("se.fc1.", "se.conv_reduce.").replace("se.fc2.", "se.conv_expand.")
        renamed[key.replace("fc.", "head.fc.") if key.startswith("fc.") else key] = value
    path = tmp_path / "timm.pth"
    torch.save(renamed, path)
    dst = create_model("seresnet50").eval()
    assert load_pretrained(dst, path).ok
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))


def test_grayscale_model_from_rgb_checkpoint_sees_gray_images_the_same(tmp_path: Path) -> None:
    src = _trained_like("resnet18")
    path = tmp_path / "rgb.pth"
    torch.save(src.state_dict(), path)
    gray = create_model("resnet18", in_chans=1).eval()
    report = load_pretrained(gray, path)
    assert any("conv1.weight" in a for a in report.adapted)
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(gray(x), src(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_adapt_input_conv_to_more_channels_keeps_the_response_to_a_constant_image() -> None:
    weight = torch.randn(8, 3, 3, 3)
    assert adapt_input_conv(weight, 5).shape == (8, 5, 3, 3)
    adapted = adapt_input_conv(weight, 6)  # RGBRGB, each scaled by 1/2
    torch.testing.assert_close(adapted.sum(dim=1), weight.sum(dim=1))


def test_classifier_is_dropped_when_num_classes_differs(tmp_path: Path) -> None:
    src = _trained_like("resnet18")
    path = tmp_path / "imagenet.pth"
    torch.save(src.state_dict(), path)
    dst = create_model("resnet18", num_classes=10)
    report = load_pretrained(dst, path)
    assert report.dropped_classifier == ["fc.weight", "fc.bias"]
    assert "classifier re-initialised" in str(report)
    torch.testing.assert_close(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_mismatched_architecture_reports_missing_keys_grouped_by_module(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(create_model("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(create_model("resnet34"), path)
    message = str(info.value)
    assert "missing: layer3.5 (10 tensors)" in message
    assert len(message.splitlines()) < 15  # grouped, not one line per tensor
    report = load_pretrained(create_model("resnet34"), path, strict=False)
    assert sum(group_keys(report.missing).values()) == len(report.missing) == 80


def test_incompatible_shapes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(create_model("resnet18").state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"layer1.0.conv1.weight: checkpoint \(64, 64, 3, 3\)"
    ):
        load_pretrained(create_model("resnet50"), path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken"])
def test_corrupt_files_raise_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_pretrained(create_model("resnet8"), path)


def test_missing_file_and_pickled_objects_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(create_model("resnet8"), tmp_path / "nope.pth")
    path = tmp_path / "pickled.pth"
    torch.save({"model": create_model("resnet8")}, path)  # a whole module: needs unpickling
    with pytest.raises(CheckpointError):
        load_pretrained(create_model("resnet8"), path)
