"""ONNX export: every zoo model, a dynamic batch, metadata, and parity on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resnetkit.data import PreprocessingSpec
from resnetkit.errors import ConfigError, ExportError
from resnetkit.export import (
    check_parity,
    export_onnx,
)
from resnetkit.models import list_models, load_model
from resnetkit.onnxio import (
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    card_metadata,
    read_metadata,
)
from tests.compress.test_fuse import build, real_input
from tests.export.rundir import real_test_images, trained_run_dir

#: Zoo models that cannot be exported, with the reason. Empty: every model exports.
CANNOT_EXPORT: dict[str, str] = {}
#: Exported in the default run; the rest (deep or wide: 5-20 s each to export) are slow.
FAST = {"resnet8", "resnet18", "preact_resnet18", "resnet1d_18", "resnet_tabular"}


#: Deeper or wider copies of a model exported below: the same module types in the same
#: order of kinds, only more of them or more channels, so the same ONNX operators. Exporting
#: them took 2 of CI's minutes; `test_each_copy_has_the_module_types_of_its_representative`
#: keeps the claim true.
EXPORTED_AS: dict[str, str] = {
    "resnet101": "resnet50", "resnet152": "resnet50", "wide_resnet50_2": "resnet50",
    "resnet32": "resnet20", "resnet44": "resnet20", "resnet56": "resnet20",
    "resnet110": "resnet20", "wrn_28_10": "wrn_16_4",
}  # fmt: skip


def zoo_params() -> list[object]:
    params: list[object] = []
    for name in list_models():
        if name in EXPORTED_AS:
            continue
        marks = [] if name in FAST else [pytest.mark.slow]
        if name in CANNOT_EXPORT:
            marks.append(pytest.mark.skip(reason=CANNOT_EXPORT[name]))
        params.append(pytest.param(name, marks=marks))
    return params


@pytest.fixture(scope="module")
def fashion() -> torch.Tensor:
    spec = PreprocessingSpec((28, 28), 1, (0.286,), (0.353,))
    return real_test_images(spec, limit=40)


@pytest.mark.parametrize("name", zoo_params())
def test_every_zoo_model_exports_with_parity_on_real_images(
    name: str, fashion: torch.Tensor, tmp_path: Path
) -> None:
    model = build(name).eval()
    x = real_input(name, fashion)
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=tuple(x.shape[1:]))
    report = check_parity(model, path, x, batch_sizes=(1, 3, 16))
    assert report.passed and report.top1_agreement >= 0.99
    assert report.max_rel_diff < 1e-4


@pytest.mark.parametrize("name", sorted(EXPORTED_AS))
def test_each_copy_has_the_module_types_of_its_representative(name: str) -> None:
    def kinds(model: torch.nn.Module) -> set[type]:
        return {type(m) for m in model.modules()}

    assert kinds(build(name)) == kinds(build(EXPORTED_AS[name]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    model, card = load_model(run)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, input_size=(1, 28, 28), metadata=card_metadata(card))
    return run, path


def test_export_has_fixed_names_a_dynamic_batch_and_opset_18(exported: tuple[Path, Path]) -> None:
    proto = onnx.load(str(exported[1]))
    (inp,), (out, embedding) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name, embedding.name) == (INPUT_NAME, OUTPUT_NAME, EMBEDDING_NAME)
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 28, 28]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18


def test_metadata_carries_preprocessing_and_labels(exported: tuple[Path, Path]) -> None:
    _, card = load_model(exported[0])
    meta = read_metadata(exported[1])
    assert card.preprocessing is not None and meta["preprocessing"] == card.preprocessing.to_dict()
    assert meta["labels"] == card.labels and len(meta["labels"]) == 10
    assert (meta["input_name"], meta["output_name"]) == ("input", "logits")


def test_trained_model_parity_at_batch_sizes_other_than_the_export_batch(
    exported: tuple[Path, Path],
) -> None:
    run, path = exported
    model, card = load_model(run)
    images = real_test_images(card.spec(), limit=200)
    report = check_parity(model, path, images, batch_sizes=(1, 7, 64))
    assert report.images == 200 and report.top1_agreement == 1.0
    assert report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 33):  # the export batch was 2
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images[:batch].numpy()})
        assert logits.shape == (batch, 10)


def test_parity_check_fails_loudly_when_the_model_differs(exported: tuple[Path, Path]) -> None:
    run, path = exported
    model, card = load_model(run)
    with torch.no_grad():
        model.fc.bias += 0.5  # the ONNX file no longer matches this model
    images = real_test_images(card.spec(), limit=32)
    with pytest.raises(ExportError, match=r"max abs .* top-1 agreement"):
        check_parity(model, path, images)


def test_opset_below_18_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset 17"):
        export_onnx(build("resnet8"), tmp_path / "m.onnx", input_size=(1, 32, 32), opset=17)
    assert not (tmp_path / "m.onnx").exists()


def test_failed_export_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError):  # wrong channel count: the model refuses the input
        export_onnx(build("resnet8"), target, input_size=(3, 32, 32))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_parity_inputs_are_real_images_not_noise(fashion: torch.Tensor) -> None:
    # Fashion-MNIST: many exactly-background pixels, unlike Gaussian noise.
    background = float((fashion == fashion.min()).float().mean())
    assert background > 0.3 and np.isfinite(fashion.numpy()).all()
