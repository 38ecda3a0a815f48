"""The evaluation loop: eval mode always, stable across batch sizes, reports and files."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetkit.data import ImageDataset, PreprocessingSpec, normalize, translate
from resnetkit.errors import ConfigError
from resnetkit.evaluate import EVAL_JSON, evaluate_model, predict_log_probs
from resnetkit.models import create_model
from tests.evaluate.helpers import fashion_split, trained_model


@pytest.fixture
def model_and_spec() -> tuple[nn.Module, PreprocessingSpec]:
    return trained_model()


@pytest.fixture(scope="module")
def test_images() -> ImageDataset:
    return fashion_split("test", 256)


def test_batch_of_one_in_train_mode_disagrees_with_the_same_image_in_a_batch(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    # In train mode BatchNorm normalises with the statistics of the current batch, so an
    # image's prediction depends on what else is in its batch (and alone, on itself only).
    model, spec = model_and_spec
    in_train_mode = copy.deepcopy(model).train()  # train-mode forwards also move BN stats
    x = normalize(test_images.images[:64], spec)  # (64, 1, 28, 28)
    with torch.no_grad():
        batched = in_train_mode(x)
        one_by_one = torch.cat([in_train_mode(x[i : i + 1]) for i in range(64)])
    assert (batched - one_by_one).abs().max() > 1.0
    assert int((batched.argmax(1) != one_by_one.argmax(1)).sum()) >= 5


def test_evaluate_model_gives_the_same_answer_at_any_batch_size(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    model.train()  # evaluate_model must switch to eval mode by itself
    data = test_images.subset(range(64))
    one = evaluate_model(model, data, spec, batch_size=1, progress=False)
    many = evaluate_model(model, data, spec, batch_size=64, progress=False)
    assert one.top1 == many.top1
    assert one.confusion == many.confusion
    by_one = predict_log_probs(model, data.images, spec, batch_size=1)
    by_64 = predict_log_probs(model, data.images, spec, batch_size=64)
    torch.testing.assert_close(by_one, by_64, rtol=0, atol=1e-5)
    # The same as a plain eval-mode forward pass.
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(normalize(data.images, spec))
    torch.testing.assert_close(by_64, logits.log_softmax(1), rtol=0, atol=1e-5)
    assert one.top1 == pytest.approx(float((logits.argmax(1) == data.labels).float().mean()))


def test_each_module_gets_its_own_mode_back_and_weights_are_untouched(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    model.train()
    frozen_bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    frozen_bn.eval()  # as fine-tuning with frozen BatchNorm leaves it
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate_model(model, test_images.subset(range(32)), spec, batch_size=8, progress=False)
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_report_is_json_and_save_writes_eval_json_and_plots(
    model_and_spec: tuple[nn.Module, PreprocessingSpec],
    test_images: ImageDataset,
    tmp_path: Path,
) -> None:
    model, spec = model_and_spec
    report = evaluate_model(model, test_images, spec, progress=False)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["num_samples"] == 256 and data["num_classes"] == 10
    assert [c["label"] for c in data["per_class"]] == list(test_images.classes)
    assert sum(map(sum, data["confusion_matrix"])) == 256
    assert 0.0 < data["top1"] <= data["top5"] <= 1.0
    assert data["images_per_s"] > 0 and data["seconds"] > 0
    assert data["precision"] == "float32" and data["device"] == "cpu"
    assert len(data["calibration"]["counts"]) == 15
    written = report.save(tmp_path)
    assert json.loads((tmp_path / EVAL_JSON).read_text()) == data
    for name in ("confusion_matrix.png", "reliability_diagram.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG")
    assert set(written) == {"json", "confusion_matrix", "reliability"}


def test_flip_tta_averages_the_two_softmaxes_only_when_asked(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    images = test_images.images[:32]
    plain = predict_log_probs(model, images, spec)
    tta = predict_log_probs(model, images, spec, tta_flip=True)
    with torch.no_grad():
        x = normalize(images, spec)
        expected = ((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2).log()
    torch.testing.assert_close(tta, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(plain, tta, atol=1e-3)
    report = evaluate_model(model, test_images.subset(range(32)), spec, tta_flip=True)
    assert report.tta_flip and report.to_dict()["tta_flip"] is True


def test_shift_tta_averages_the_shifted_views_of_the_raw_images(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    images = test_images.images[:16]
    tta = predict_log_probs(model, images, spec, tta_flip=True, tta_shift=1)
    views = [images, images.flip(-1)]
    views += [translate(v, d, d) for v in list(views) for d in (1, -1)]
    with torch.no_grad():
        probs = [model(normalize(v, spec)).softmax(1) for v in views]
    torch.testing.assert_close(tta, (sum(probs) / 6).log(), rtol=0, atol=1e-5)
    report = evaluate_model(model, test_images.subset(range(16)), spec, tta_shift=1)
    assert report.to_dict()["tta_shift"] == 1
    with pytest.raises(ConfigError, match="tta_shift"):
        predict_log_probs(model, images, spec, tta_shift=-1)


def test_flip_tta_on_digits_is_refused(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    digits = dataclasses.replace(test_images, name="mnist", allows_hflip=False)
    with pytest.raises(ConfigError, match="mirrored image can change its label"):
        evaluate_model(model, digits, spec, tta_flip=True, progress=False)


def test_bfloat16_autocast_on_cpu_when_asked(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    data = test_images.subset(range(128))
    fp32 = evaluate_model(model, data, spec, progress=False)
    bf16 = evaluate_model(model, data, spec, precision="bf16", progress=False)
    assert bf16.precision == "bfloat16" and fp32.precision == "float32"
    assert abs(bf16.top1 - fp32.top1) <= 0.05


def test_data_that_does_not_fit_the_model_is_a_config_error(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    rgb32 = PreprocessingSpec(size=(32, 32), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ConfigError, match=r"1x28x28 images but the model expects 3x32x32"):
        evaluate_model(model, test_images, rgb32, progress=False)
    five_classes = create_model("resnet8", in_chans=1, num_classes=5)
    with pytest.raises(ConfigError, match="outputs 5 classes but the dataset has 10"):
        evaluate_model(five_classes, test_images, spec, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        evaluate_model(model, test_images.subset([]), spec, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate_model(model, test_images, spec, batch_size=0, progress=False)


def test_progress_bar_goes_to_stderr_and_can_be_disabled(
    model_and_spec: tuple[nn.Module, PreprocessingSpec],
    test_images: ImageDataset,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, spec = model_and_spec
    data = test_images.subset(range(16))
    evaluate_model(model, data, spec, batch_size=8, progress=True)
    assert capsys.readouterr().out == ""
    evaluate_model(model, data, spec, batch_size=8, progress=False)
    assert capsys.readouterr() == ("", "")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_on_cuda_matches_cpu_and_leaves_the_model_where_it_was(
    model_and_spec: tuple[nn.Module, PreprocessingSpec], test_images: ImageDataset
) -> None:
    model, spec = model_and_spec
    cpu = predict_log_probs(model, test_images.images, spec)
    gpu = predict_log_probs(model, test_images.images, spec, device="cuda", precision="fp32")
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-3)
    assert next(model.parameters()).device.type == "cpu"
    report = evaluate_model(model, test_images, spec, device="cuda", progress=False)
    assert report.device.startswith("cuda") and report.precision in ("bfloat16", "float16")
    assert abs(report.top1 - evaluate_model(model, test_images, spec, progress=False).top1) < 0.05
