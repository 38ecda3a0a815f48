"""Drift detection: each detector on synthetic Gaussians, the combined verdict, the reference
file, and (slow) real shifts seen through a briefly trained ResNet."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save_file

from resnetkit.config import DataConfig, ModelConfig, TrainConfig
from resnetkit.data import load_dataset
from resnetkit.errors import ConfigError, DriftError
from resnetkit.evaluate import predict_embeddings
from resnetkit.models import load_model
from resnetkit.monitor.drift import (
    DETECTORS,
    DetectorResult,
    DriftReference,
    DriftSettings,
    chi2_class,
    fit_pca,
    holm_adjust,
    ks_confidence,
    ks_pca,
    mmd,
)
from resnetkit.monitor.drift_plots import plot_detection_heatmap, plot_drift
from resnetkit.train import train

DIM, CLASSES = 8, 5
FAST = DriftSettings(mmd_permutations=100, chi2_simulations=300)


def gaussian_embeddings(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    # Anisotropic, like a network's embeddings: a few strong directions, many weak ones.
    scales = np.linspace(3.0, 0.3, DIM)
    return rng.normal(size=(n, DIM)) * scales + shift


def softmax_outputs(
    rng: np.random.Generator, n: int, class_weights: np.ndarray | None = None, sharp: float = 3.0
) -> np.ndarray:
    weights = np.full(CLASSES, 1.0 / CLASSES) if class_weights is None else class_weights
    classes = rng.choice(CLASSES, size=n, p=weights)
    logits = rng.normal(size=(n, CLASSES))
    logits[np.arange(n), classes] += sharp
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_reference(seed: int, n: int = 400, run_settings: DriftSettings = FAST) -> DriftReference:
    rng = np.random.default_rng(seed)
    return DriftReference.from_arrays(
        gaussian_embeddings(rng, n), softmax_outputs(rng, n), settings=run_settings
    )


# --- each detector under no shift: p-values roughly uniform, false positives <= alpha --------

Detector = Callable[[np.random.Generator, int], DetectorResult]


def _ks_pca(rng: np.random.Generator, seed: int) -> DetectorResult:
    return ks_pca(gaussian_embeddings(rng, 300), gaussian_embeddings(rng, 40))


def _mmd(rng: np.random.Generator, seed: int) -> DetectorResult:
    return mmd(
        gaussian_embeddings(rng, 300),
        gaussian_embeddings(rng, 40),
        seed=seed,
        permutations=60,
        max_reference=120,
    )


def _chi2(rng: np.random.Generator, seed: int) -> DetectorResult:
    return chi2_class(
        softmax_outputs(rng, 300), softmax_outputs(rng, 40), seed=seed, simulations=300
    )


def _ks_confidence(rng: np.random.Generator, seed: int) -> DetectorResult:
    return ks_confidence(softmax_outputs(rng, 300), softmax_outputs(rng, 40))


NULL_RUNS = {"ks_pca": _ks_pca, "mmd": _mmd, "chi2_class": _chi2, "ks_confidence": _ks_confidence}


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_false_positive_rate_is_at_most_alpha_without_shift(name: str) -> None:
    runs = 200
    p_values = []
    for seed in range(runs):
        result = NULL_RUNS[name](np.random.default_rng(seed), seed)
        assert result.name == name
        assert result.drift == (result.p_value <= 0.05)
        p_values.append(result.p_value)
    p = np.array(p_values)
    # 200 runs at a true rate of 5%: 18 or more (9%) happens with probability < 0.3%.
    assert np.mean(p <= 0.05) <= 0.09
    if name != "ks_pca":  # Bonferroni over the components makes ks_pca conservative
        assert 0.4 <= p.mean() <= 0.6, "p-values under no shift should be roughly uniform"
        assert np.mean(p <= 0.5) == pytest.approx(0.5, abs=0.12)


def test_combined_verdict_false_positive_rate_is_at_most_alpha() -> None:
    flagged = 0
    runs = 100
    for seed in range(runs):
        rng = np.random.default_rng(1000 + seed)
        reference = DriftReference.from_arrays(
            gaussian_embeddings(rng, 300), softmax_outputs(rng, 300), settings=FAST
        )
        report = reference.evaluate(
            gaussian_embeddings(rng, 40), softmax_outputs(rng, 40), seed=seed
        )
        flagged += report.drift_detected
    assert flagged / runs <= 0.08


# --- each detector sees the shift it is for -------------------------------------------------


def test_embedding_detectors_flag_a_clear_mean_shift() -> None:
    rng = np.random.default_rng(0)
    reference, window = gaussian_embeddings(rng, 400), gaussian_embeddings(rng, 50, shift=0.8)
    assert ks_pca(reference, window).drift
    assert mmd(reference, window, permutations=100).drift
    unshifted = gaussian_embeddings(rng, 50)
    assert ks_pca(reference, unshifted).p_value > 0.05


def test_chi2_flags_a_change_in_the_class_mix() -> None:
    rng = np.random.default_rng(1)
    reference = softmax_outputs(rng, 1000)
    mix = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    result = chi2_class(reference, softmax_outputs(rng, 60, mix, sharp=6.0))
    assert result.drift and result.p_value < 0.01
    assert result.details["window_counts"][2:] == [0, 0, 0]


def test_chi2_handles_classes_with_zero_expected_counts() -> None:
    rng = np.random.default_rng(2)
    only_three = np.array([1 / 3, 1 / 3, 1 / 3, 0.0, 0.0])
    reference = softmax_outputs(rng, 500, only_three, sharp=8.0)
    same = chi2_class(reference, softmax_outputs(rng, 30, only_three, sharp=8.0))
    assert math.isfinite(same.statistic) and same.p_value > 0.05  # classes 3, 4: never seen
    unseen = softmax_outputs(rng, 30, np.array([0.0, 0.0, 0.0, 0.5, 0.5]), sharp=8.0)
    flagged = chi2_class(reference, unseen)
    assert math.isfinite(flagged.statistic) and flagged.drift


def test_ks_confidence_flags_a_less_confident_window() -> None:
    rng = np.random.default_rng(3)
    reference = softmax_outputs(rng, 1000, sharp=4.0)
    assert ks_confidence(reference, softmax_outputs(rng, 60, sharp=1.0)).drift


def test_evaluate_flags_shifts_and_reports_every_detector() -> None:
    reference = make_reference(4)
    rng = np.random.default_rng(5)
    shifted = reference.evaluate(
        gaussian_embeddings(rng, 60, shift=1.0), softmax_outputs(rng, 60), seed=0
    )
    assert shifted.drift_detected
    assert [r.name for r in shifted.results] == list(DETECTORS)
    assert shifted.result("ks_pca").drift or shifted.result("mmd").drift
    assert (shifted.reference_size, shifted.window_size) == (400, 60)
    assert shifted.drift_detected == any(r.drift for r in shifted.results)
    with pytest.raises(KeyError, match="no detector"):
        shifted.result("psi")


# --- the combination and the pieces ---------------------------------------------------------


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    assert holm_adjust([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


def test_fit_pca_keeps_enough_components_within_the_cap() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 10)) * np.array([10, 5, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1])
    pca = fit_pca(x, variance=0.9, max_components=8)
    assert pca.explained_variance_ratio.sum() >= 0.9
    assert pca.num_components < 8
    assert fit_pca(x, variance=1.0, max_components=3).num_components == 3
    np.testing.assert_allclose(
        pca.components @ pca.components.T, np.eye(pca.num_components), atol=1e-9
    )
    assert fit_pca(np.ones((30, 4))).num_components == 1  # constant: no variance at all


def test_pca_fitted_on_other_reference_points_does_not_flag_fresh_isotropic_data() -> None:
    # The top components of a sample overfit it (its variance along them is inflated), so
    # testing against the points the PCA was fitted on would flag most windows here.
    flagged = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        flagged += ks_pca(rng.normal(size=(400, 64)), rng.normal(size=(150, 64))).drift
    assert flagged <= 5


def test_report_to_dict_is_json_with_a_top_level_verdict() -> None:
    reference = make_reference(7)
    rng = np.random.default_rng(8)
    report = reference.evaluate(gaussian_embeddings(rng, 30), softmax_outputs(rng, 30), seed=3)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["drift_detected"] is report.drift_detected
    assert set(data["detectors"]) == set(DETECTORS)
    assert data["alpha"] == 0.05 and data["window_size"] == 30
    for entry in data["detectors"].values():
        assert 0.0 <= entry["p_value"] <= entry["details"]["holm_p_value"] <= 1.0


def test_evaluate_is_deterministic_and_safe_from_many_threads() -> None:
    reference = make_reference(9)
    rng = np.random.default_rng(10)
    windows = [
        (gaussian_embeddings(rng, 50, shift=0.2 * i), softmax_outputs(rng, 50)) for i in range(6)
    ]
    expected = [reference.evaluate(e, p, seed=i).to_dict() for i, (e, p) in enumerate(windows)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(reference.evaluate, e, p, seed=i) for i, (e, p) in enumerate(windows)
        ]
        assert [f.result().to_dict() for f in futures] == expected


# --- errors ---------------------------------------------------------------------------------


def test_a_window_below_the_minimum_size_is_refused() -> None:
    reference = make_reference(11)
    rng = np.random.default_rng(12)
    with pytest.raises(DriftError, match="at least 20"):
        reference.evaluate(gaussian_embeddings(rng, 19), softmax_outputs(rng, 19))


def test_mismatched_dimensions_are_refused() -> None:
    reference = make_reference(13)
    rng = np.random.default_rng(14)
    with pytest.raises(DriftError, match="dimensions"):
        reference.evaluate(rng.normal(size=(30, DIM + 1)), softmax_outputs(rng, 30))
    with pytest.raises(DriftError, match="classes"):
        reference.evaluate(gaussian_embeddings(rng, 30), rng.random((30, CLASSES + 1)))
    with pytest.raises(DriftError, match="30 window embeddings but 31"):
        reference.evaluate(gaussian_embeddings(rng, 30), softmax_outputs(rng, 31))
    with pytest.raises(DriftError, match="columns"):
        ks_pca(rng.normal(size=(50, 3)), rng.normal(size=(50, 4)))


def test_nan_in_a_window_or_reference_is_refused() -> None:
    reference = make_reference(15)
    rng = np.random.default_rng(16)
    embeddings = gaussian_embeddings(rng, 30)
    embeddings[3, 2] = np.nan
    with pytest.raises(DriftError, match="NaN"):
        reference.evaluate(embeddings, softmax_outputs(rng, 30))
    with pytest.raises(DriftError, match="NaN"):
        DriftReference.from_arrays(embeddings, softmax_outputs(rng, 30))
    with pytest.raises(DriftError, match="NaN"):
        ks_confidence(softmax_outputs(rng, 30), np.full((30, CLASSES), np.inf))


def test_bad_settings_and_arguments_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        DriftSettings(alpha=1.5)
    with pytest.raises(ConfigError, match="min_window"):
        DriftSettings(min_window=1)
    rng = np.random.default_rng(20)
    embeddings, probabilities = gaussian_embeddings(rng, 30), softmax_outputs(rng, 30)
    with pytest.raises(ConfigError, match="seed"):
        make_reference(21).evaluate(embeddings, probabilities, seed=-1)
    with pytest.raises(ConfigError, match="alpha"):
        ks_pca(embeddings, embeddings, alpha=0.0)
    with pytest.raises(ConfigError, match="permutations"):
        mmd(embeddings, embeddings, permutations=0)


# --- the reference file ---------------------------------------------------------------------


def _write_reference(path: Path, n: int = 100, drop: str | None = None) -> None:
    rng = np.random.default_rng(17)
    tensors: dict[str, np.ndarray] = {
        "embeddings": gaussian_embeddings(rng, n).astype(np.float32),
        "probabilities": softmax_outputs(rng, n).astype(np.float32),
        "labels": rng.integers(0, CLASSES, n).astype(np.int64),
    }
    tensors.pop(drop or "", None)
    save_file(tensors, str(path))


def test_from_file_reads_a_run_directory_or_the_file(tmp_path: Path) -> None:
    _write_reference(tmp_path / "drift_reference.safetensors")
    from_dir = DriftReference.from_file(tmp_path)
    from_path = DriftReference.from_file(tmp_path / "drift_reference.safetensors")
    assert (from_dir.num_samples, from_dir.dim, from_dir.num_classes) == (100, DIM, CLASSES)
    assert from_dir.labels is not None and from_dir.labels.dtype == np.int64
    np.testing.assert_array_equal(from_dir.projected, from_path.projected)


def test_from_file_explains_a_missing_or_incomplete_reference(tmp_path: Path) -> None:
    with pytest.raises(DriftError, match="resnetkit train"):
        DriftReference.from_file(tmp_path)
    _write_reference(tmp_path / "partial.safetensors", drop="probabilities")
    with pytest.raises(DriftError, match="probabilities"):
        DriftReference.from_file(tmp_path / "partial.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DriftError, match="cannot read"):
        DriftReference.from_file(tmp_path / "junk.safetensors")


# --- plots ----------------------------------------------------------------------------------


def test_plots_are_written(tmp_path: Path) -> None:
    reference = make_reference(18)
    rng = np.random.default_rng(19)
    embeddings, probabilities = gaussian_embeddings(rng, 40, shift=1.0), softmax_outputs(rng, 40)
    report = reference.evaluate(embeddings, probabilities)
    out = plot_drift(
        reference,
        embeddings,
        probabilities,
        report,
        tmp_path / "drift.png",
        class_names=list("abcde"),
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rates = [[0.02, 0.03], [0.9, 1.0]]
    heatmap = plot_detection_heatmap(rates, ["none", "mnist"], [50, 100], tmp_path / "h.png")
    assert heatmap.stat().st_size > 1000
    with pytest.raises(ConfigError, match="do not fit"):
        plot_detection_heatmap(rates, ["none"], [50, 100], tmp_path / "bad.png")


# --- property: any valid arrays give a report or a DriftError -------------------------------

_finite = st.floats(-1e6, 1e6, width=32)


@st.composite
def reference_and_window(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    dim, classes = draw(st.integers(1, 5)), draw(st.integers(2, 4))
    n_ref, n_win = draw(st.integers(20, 50)), draw(st.integers(1, 40))
    return (
        draw(hnp.arrays(np.float32, (n_ref, dim), elements=_finite)),
        draw(hnp.arrays(np.float32, (n_ref, classes), elements=st.floats(0, 1, width=32))),
        draw(hnp.arrays(np.float32, (n_win, dim), elements=_finite)),
        draw(hnp.arrays(np.float32, (n_win, classes), elements=st.floats(0, 1, width=32))),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=reference_and_window(), seed=st.integers(0, 2**32 - 1))
def test_any_valid_arrays_give_p_values_in_the_unit_interval(
    arrays: tuple[np.ndarray, ...], seed: int
) -> None:
    ref_emb, ref_prob, win_emb, win_prob = arrays
    reference = DriftReference.from_arrays(
        ref_emb, ref_prob, settings=DriftSettings(mmd_permutations=20, chi2_simulations=50)
    )
    try:
        report = reference.evaluate(win_emb, win_prob, seed=seed)
    except DriftError:
        assert len(win_emb) < 20
        return
    for result in report.results:
        assert 0.0 <= result.p_value <= 1.0
        assert math.isfinite(result.statistic)
    json.dumps(report.to_dict())


# --- slow: real shifts through a briefly trained ResNet --------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet8 after one epoch on 10k Fashion-MNIST images, with its drift reference."""
    cfg = TrainConfig(
        model=ModelConfig(arch="resnet8"),
        data=DataConfig(name="fashion-mnist", val_fraction=0.2, limit=10_000, test_limit=500),
        epochs=1,
        precision="fp32",
        channels_last=False,
        progress=False,
    )
    run_dir = tmp_path_factory.mktemp("drift") / "run"
    train(cfg, run_dir)
    return run_dir


def _model_outputs(run_dir: Path, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    model, card = load_model(run_dir)
    embeddings, probabilities = predict_embeddings(model, pixels, card.spec(), precision="fp32")
    return embeddings.numpy(), probabilities.numpy()


def _flagged(run_dir: Path, pixels: torch.Tensor, windows: int, size: int = 200) -> int:
    reference = DriftReference.from_file(run_dir)
    embeddings, probabilities = _model_outputs(run_dir, pixels)
    rng = np.random.default_rng(0)
    flagged = 0
    for k in range(windows):
        idx = rng.choice(len(embeddings), size, replace=False)
        flagged += reference.evaluate(embeddings[idx], probabilities[idx], seed=k).drift_detected
    return flagged


def _fashion_test(limit: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("fashion-mnist", "test", limit=limit)
    return test.images.float() / 255.0, test.labels


@pytest.mark.slow
def test_real_fashion_mnist_test_windows_are_mostly_not_flagged(trained_run: Path) -> None:
    pixels, _ = _fashion_test()
    assert _flagged(trained_run, pixels, windows=10) <= 2


@pytest.mark.slow
@pytest.mark.parametrize("shift", ["mnist", "three_classes", "brightness_0.6"])
def test_real_shifts_are_flagged(trained_run: Path, shift: str) -> None:
    pixels, labels = _fashion_test()
    if shift == "mnist":
        pixels = load_dataset("mnist", "test", limit=3000).images.float() / 255.0
    elif shift == "three_classes":
        pixels = pixels[labels < 3]
    else:
        pixels = pixels * 0.6
    assert _flagged(trained_run, pixels, windows=5) >= 4
