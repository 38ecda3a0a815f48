"""Our ResNets are state-dict compatible with torchvision's, checked without torchvision.

``fixtures/torchvision_parity.json`` holds, for each torchvision model, its state-dict
keys and shapes and its float64 logits after filling it with the RNG-free rule in
``parity_rule.py``. Here our model gets the same keys, the same values and the same input,
and must give the same logits. To regenerate the fixture, see
``scripts/make_parity_fixture.py``.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import resnetkit
from resnetkit.models import load_pretrained

HERE = Path(__file__).resolve().parent
FIXTURE_PATH = HERE / "fixtures" / "torchvision_parity.json"
MAX_REL_DIFF = 1e-5
MODEL_NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    pytest.param("resnet101", marks=pytest.mark.slow),
    pytest.param("resnet152", marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", marks=pytest.mark.slow),  # 69M values to fill
    "resnext50_32x4d",
]


def _load_rule() -> ModuleType:
    # By path, as the fixture script does: the test tree is not an importable package.
    spec = importlib.util.spec_from_file_location("parity_rule", HERE / "parity_rule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rule = _load_rule()


@cache
def _fixture() -> dict[str, Any]:
    return json.loads(FIXTURE_PATH.read_text(encoding="utf-8"))


def _layout(model: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(key, list(t.shape)) for key, t in model.state_dict().items()]


def _filled_model(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Our float64 model in eval mode, loaded with the rule's values for its own layout."""
    # float64 before loading, so the rule's float64 values are not rounded to float32.
    model = resnetkit.create_model(name).double().eval()
    state = rule.fill_state_dict(_layout(model))
    model.load_state_dict(state, strict=True)
    return model, state


def _max_rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _layout_diff(ours: list[tuple[str, list[int]]], theirs: list[tuple[str, list[int]]]) -> str:
    """A readable account of how two state-dict layouts differ; empty when they agree."""
    ours_d, theirs_d = dict(ours), dict(theirs)
    lines = [f"missing (torchvision has, we lack): {k} {v}" for k, v in theirs if k not in ours_d]
    lines += [
        f"unexpected (we have, torchvision lacks): {k} {v}" for k, v in ours if k not in theirs_d
    ]
    lines += [
        f"shape of {k}: ours {v}, torchvision {theirs_d[k]}"
        for k, v in ours
        if k in theirs_d and v != theirs_d[k]
    ]
    if not lines and ours != theirs:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        lines.append(
            f"same keys and shapes, different order from index {first}: "
            f"ours {ours[first][0]}, torchvision {theirs[first][0]}"
        )
    return "\n".join(lines)


def test_fixture_was_made_with_this_rule() -> None:
    fixture = _fixture()
    assert fixture["rule_version"] == rule.RULE_VERSION, (
        "parity_rule.py changed since the fixture was made; rerun scripts/make_parity_fixture.py"
    )
    image = rule.make_input()
    assert list(image.shape) == fixture["input"]["shape"]
    assert float(image.abs().sum()) == pytest.approx(fixture["input"]["checksum"], rel=1e-12)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_keys_and_shapes_match_torchvision(name: str) -> None:
    theirs = [(key, shape) for key, shape in _fixture()["models"][name]["state_dict"]]
    ours = _layout(resnetkit.create_model(name))
    diff = _layout_diff(ours, theirs)
    assert not diff, f"{name}: state dict differs from torchvision's:\n{diff}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_match_torchvision_with_same_weights(name: str) -> None:
    expected = _fixture()["models"][name]
    model, state = _filled_model(name)
    assert rule.checksum(state) == pytest.approx(expected["state_dict_checksum"], rel=1e-9)
    with torch.no_grad():
        ours = model(rule.make_input())  # (B, 1000)
    theirs = torch.tensor(expected["logits"], dtype=torch.float64)
    assert ours.shape == theirs.shape
    rel = _max_rel_diff(ours, theirs)
    print(f"{name}: max |ours - torchvision| / max |torchvision| = {rel:.3e}")
    assert rel <= MAX_REL_DIFF, f"{name}: logits differ from torchvision by {rel:.3e} (relative)"


@pytest.mark.parametrize(("suffix", "prefix"), [(".pth", "module."), (".safetensors", "model.")])
def test_load_pretrained_strips_prefix_and_gives_torchvision_logits(
    tmp_path: Path, suffix: str, prefix: str
) -> None:
    name = "resnet18"
    reference, state = _filled_model(name)
    path = tmp_path / f"weights{suffix}"
    prefixed = {prefix + key: t for key, t in state.items()}
    if suffix == ".pth":
        torch.save(prefixed, path)
    else:
        save_file(prefixed, str(path))

    model = resnetkit.create_model(name).double()
    report = load_pretrained(model, path)
    assert report.ok, str(report)
    assert report.loaded == len(state)
    model.eval()
    with torch.no_grad():
        ours = model(rule.make_input())
        ref = reference(rule.make_input())
    theirs = torch.tensor(_fixture()["models"][name]["logits"], dtype=torch.float64)
    assert torch.equal(ours, ref)
    assert _max_rel_diff(ours, theirs) <= MAX_REL_DIFF
