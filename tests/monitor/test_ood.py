"""The OOD detector: calibration, the Mahalanobis and energy math, its file, the far-OOD sets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from resnetkit.errors import CheckpointError, DriftError
from resnetkit.monitor.ood import (
    OOD_FILE,
    OODDetector,
    auroc,
    detector_beside,
    energy,
    fit_from_reference,
    fpr_at_tpr,
)
from resnetkit.monitor.robustness import far_ood_images, ood_separation


def _mixture(
    rng: np.random.Generator, n: int, classes: int = 4, dim: int = 8, spread: float = 4.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian classes with one shared (non-diagonal) covariance: embeddings, logits, labels."""
    centres = rng.normal(0, spread, (classes, dim))
    mixing = rng.normal(0, 1, (dim, dim)) / np.sqrt(dim) + np.eye(dim)
    labels = rng.integers(0, classes, n)
    x = centres[labels] + rng.normal(0, 1, (n, dim)) @ mixing
    logits = x @ rng.normal(0, 1, (dim, classes))
    return x, logits, labels


def _generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_threshold_lets_95_percent_of_new_in_distribution_samples_pass() -> None:
    rng = _generator(0)
    x, z, y = _mixture(rng, 8000)
    detector = OODDetector.fit(x[:4000], z[:4000], y[:4000])
    for method in ("mahalanobis", "energy", "combined"):
        flagged = detector.score(x[4000:], z[4000:], method).flagged.mean()
        assert 0.035 <= flagged <= 0.065, (method, flagged)
    far = detector.score(x[4000:] + 12.0, z[4000:], "mahalanobis")
    assert far.flagged.mean() > 0.99


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    classes=st.integers(2, 6),
    dim=st.integers(2, 12),
    quantile=st.sampled_from([0.9, 0.95, 0.99]),
)
def test_calibration_on_random_gaussians_flags_about_one_minus_quantile(
    seed: int, classes: int, dim: int, quantile: float
) -> None:
    rng = _generator(seed)
    x, z, y = _mixture(rng, 6000, classes, dim)
    detector = OODDetector.fit(x[:3000], z[:3000], y[:3000], quantile=quantile)
    flagged = float(detector.score(x[3000:], z[3000:]).flagged.mean())
    # Out-of-sample calibration: within sampling error of 1 - quantile on 3,000 new samples.
    assert abs(flagged - (1 - quantile)) < 0.025, (flagged, quantile)


@pytest.mark.parametrize("transform", ["none", "sqrt"])
def test_mahalanobis_score_is_the_direct_minimum_over_classes(transform: str) -> None:
    rng = _generator(1)
    raw_x, z, y = _mixture(rng, 600, classes=3, dim=5)
    detector = OODDetector.fit(raw_x, z, y, transform=transform)
    x = raw_x if transform == "none" else np.sign(raw_x) * np.sqrt(np.abs(raw_x))
    means = np.stack([x[y == k].mean(axis=0) for k in range(3)])
    centred = x - means[y]
    cov = centred.T @ centred / len(x)
    shrunk = 0.99 * cov + 0.01 * np.trace(cov) / 5 * np.eye(5)
    precision = np.linalg.inv(shrunk)
    np.testing.assert_allclose(detector.means, means, rtol=1e-10)
    np.testing.assert_allclose(detector.precision, precision, rtol=1e-6)
    probe = rng.normal(0, 3, (50, 5))
    seen = probe if transform == "none" else np.sign(probe) * np.sqrt(np.abs(probe))
    direct = np.array([min(float((p - m) @ precision @ (p - m)) for m in means) for p in seen])
    raw = detector.raw(probe, None, "mahalanobis")
    np.testing.assert_allclose(raw, direct, rtol=1e-8)
    np.testing.assert_allclose(
        detector.score(probe, None).scores, direct / detector.thresholds["mahalanobis"]
    )


def test_energy_is_minus_logsumexp_and_stable_for_large_logits() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -5.0]])
    expected = [-np.log(np.exp(1) + np.exp(2) + np.exp(3)), -(1000.0 + np.log(2.0))]
    np.testing.assert_allclose(energy(logits), expected, rtol=1e-12)


def test_a_rank_deficient_embedding_still_fits_and_scores_finitely() -> None:
    rng = _generator(2)
    x, z, y = _mixture(rng, 400, dim=6)
    x = np.concatenate([x, np.zeros((400, 3))], axis=1)  # three dead units, as ReLU leaves
    detector = OODDetector.fit(x, z, y)
    assert np.isfinite(detector.score(x, z).scores).all()


def test_unknown_labels_fall_back_to_predicted_classes() -> None:
    rng = _generator(3)
    x, z, _ = _mixture(rng, 300)
    unlabeled = OODDetector.fit(x, z, np.full(300, -1))
    predicted = OODDetector.fit(x, z, z.argmax(axis=1))
    np.testing.assert_allclose(unlabeled.means, predicted.means)


def test_bad_inputs_are_clear_errors() -> None:
    rng = _generator(4)
    x, z, y = _mixture(rng, 100)
    with pytest.raises(DriftError, match="at least 20"):
        OODDetector.fit(x[:5], z[:5])
    with pytest.raises(DriftError, match="NaN"):
        OODDetector.fit(np.where(x > 3, np.nan, x), z)
    detector = OODDetector.fit(x, z, y)
    with pytest.raises(DriftError, match="another model"):
        detector.score(np.zeros((2, 3)), z[:2])
    with pytest.raises(DriftError, match="embedding"):
        detector.score(None, z[:2])


def test_save_and_load_round_trip_scores_the_same(tmp_path: Path) -> None:
    rng = _generator(5)
    x, z, y = _mixture(rng, 500)
    detector = OODDetector.fit(x, z, y, method="combined", source="validation split")
    detector.save(tmp_path / OOD_FILE)
    loaded = OODDetector.load(tmp_path / OOD_FILE)
    assert (loaded.method, loaded.source, loaded.samples) == ("combined", "validation split", 500)
    for method in ("mahalanobis", "energy", "combined"):
        np.testing.assert_array_equal(
            loaded.score(x, z, method).scores, detector.score(x, z, method).scores
        )


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "newer", "empty"])
def test_a_corrupt_or_foreign_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    rng = _generator(6)
    x, z, y = _mixture(rng, 200)
    path = tmp_path / OOD_FILE
    OODDetector.fit(x, z, y).save(path)
    if damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "foreign":
        np.savez(path.open("wb"), weights=np.zeros(3))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["format_version"] = np.array(99)
        np.savez(path.open("wb"), **arrays)
    with pytest.raises(CheckpointError, match="OOD detector"):
        OODDetector.load(path)


def test_a_drift_reference_with_logits_fits_a_detector_and_an_old_one_says_why(
    tmp_path: Path,
) -> None:
    rng = _generator(7)
    x, z, y = _mixture(rng, 300)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    tensors = {"embeddings": x.astype(np.float32), "probabilities": probs.astype(np.float32)}
    save_file({**tensors, "labels": y}, str(tmp_path / "old.safetensors"))
    with pytest.raises(DriftError, match="no logits"):
        fit_from_reference(tmp_path / "old.safetensors")
    detector, why = detector_beside(tmp_path, tmp_path / "old.safetensors")
    assert detector is None and "no logits" in why
    save_file(
        {**tensors, "labels": y, "logits": z.astype(np.float32)}, str(tmp_path / "new.safetensors")
    )
    detector, why = detector_beside(tmp_path, tmp_path / "new.safetensors")
    assert detector is not None and "fitted on new.safetensors" in why
    detector.save(tmp_path / OOD_FILE)  # a stored detector wins over fitting again
    assert detector_beside(tmp_path, tmp_path / "new.safetensors")[1] == OOD_FILE


def test_the_trainers_reference_holds_logits_consistent_with_its_probabilities() -> None:
    from resnetkit.models import ClassifierModel
    from resnetkit.train.loop import drift_reference
    from resnetkit.train.setup import build_model, load_train_data, model_kwargs
    from tests.train.conftest import tiny_config

    cfg = tiny_config(data=dataclasses.replace(tiny_config().data, limit=700))
    data = load_train_data(cfg.data, cfg.seed)
    model = build_model(cfg, model_kwargs(cfg, data), torch.device("cpu"), data).eval()
    assert isinstance(model, ClassifierModel)
    reference = drift_reference(model, data)
    torch.testing.assert_close(
        reference["logits"].softmax(dim=1), reference["probabilities"], atol=1e-5, rtol=1e-4
    )
    detector = OODDetector.fit(
        reference["embeddings"].numpy(), reference["logits"].numpy(), reference["labels"].numpy()
    )
    assert detector.dim == model.num_features


def test_auroc_and_fpr_match_their_definitions() -> None:
    rng = _generator(8)
    inside, outside = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    pairs = (outside[None, :] > inside[:, None]).mean() + 0.5 * (
        outside[None, :] == inside[:, None]
    ).mean()
    assert auroc(inside, outside) == pytest.approx(pairs, abs=1e-12)
    assert auroc([0, 1], [0, 1]) == pytest.approx(0.5)
    threshold = np.sort(outside)[int(np.floor(0.05 * (len(outside) - 1)))]
    assert fpr_at_tpr(inside, outside) == pytest.approx(np.mean(inside >= threshold))
    assert fpr_at_tpr(inside, inside + 100) == 0.0


def test_far_ood_sets_are_uint8_at_the_input_size_and_separate_a_toy_detector() -> None:
    sets = far_ood_images((1, 28, 28), 40, seed=0)
    assert set(sets) == {"uniform_noise", "photos"}
    for images in sets.values():
        assert images.shape == (40, 1, 28, 28) and images.dtype == np.uint8
    assert far_ood_images((3, 16, 20), 3)["photos"].shape == (3, 3, 16, 20)
    # Mean brightness as a toy score: noise sits at 127.5, well apart from dark images.
    dark = {"max_softmax": np.zeros(40), "toy": np.full(40, 10.0)}
    table = ood_separation(dark, {"uniform_noise": {"toy": sets["uniform_noise"].mean((1, 2, 3))}})
    assert table["uniform_noise"]["toy"]["auroc"] == 1.0
    assert table["uniform_noise"]["toy"]["flagged"] == 1.0
