"""The gate's robustness checks (issue #27 item 4): mCE and OOD AUROC against production.

Real models, run as the gate's ONNX artifact: production is the session's briefly trained
resnet8 with an OOD detector fitted on held-out test images; candidates are a second
training seed (a normal candidate), random weights with a detector fitted on noise (much less
robust on both counts), and production's weights with no detector at all. A small setting
(200 images, three corruptions at two severities) keeps each evaluation to seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resnetkit.data import ImageDataset, load_dataset
from resnetkit.export import LoadedModel, load_model_ref
from resnetkit.models import create_model, save_model
from resnetkit.monitor.ood import OOD_FILE, OODDetector
from resnetkit.monitor.ood_eval import model_outputs
from resnetkit.pipeline import load_pipeline_config, run_pipeline
from resnetkit.pipeline.config import GateSection
from resnetkit.pipeline.gate import gate_checks, robustness_checks, robustness_evaluation
from resnetkit.registry import open_registry
from tests.export.rundir import ARCH_KWARGS, trained_run_dir

GATE = GateSection(
    max_mce_increase=25.0, max_ood_auroc_drop=0.05, robustness_images=200,
    robustness_severities=(2, 4), robustness_corruptions=("gaussian_noise", "contrast", "rotate"),
)  # fmt: skip


def _with_detector(run: Path, out: Path, held_out: np.ndarray, labels: np.ndarray | None) -> Path:
    """A copy of ``run`` whose ``ood_detector.npz`` is fitted on ``held_out``."""
    shutil.copytree(run, out)
    emb, logits = model_outputs(load_model_ref(str(out)), held_out, "cpu")
    assert emb is not None
    OODDetector.fit(emb, logits, labels, source="test").save(out / OOD_FILE)
    return out


def _random_weights(run: Path, out: Path) -> Path:
    """``run`` (its card and summary) with freshly initialised weights: it learned nothing."""
    shutil.copytree(run, out)
    loaded = load_model_ref(str(run))
    torch.manual_seed(3)
    model = create_model(loaded.card.arch, **ARCH_KWARGS).eval()
    save_model(model, out, arch=loaded.card.arch, kwargs=ARCH_KWARGS,
               labels=list(loaded.card.labels), preprocessing=loaded.spec)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    base = str(tmp_path_factory.getbasetemp())
    folder = tmp_path_factory.mktemp("gate-robustness")
    test = load_dataset("fashion-mnist", "test")
    held, labels = test.images[5000:5600].numpy(), test.labels[5000:5600].numpy()
    noise = np.random.default_rng(0).integers(0, 256, (600, 1, 28, 28), dtype=np.uint8)
    good, second = trained_run_dir(base), trained_run_dir(base, seed=1)
    paths = {
        "production": _with_detector(good, folder / "production", held, labels),
        "normal": _with_detector(second, folder / "normal", held, labels),
        "random": _with_detector(
            _random_weights(good, folder / "random-run"), folder / "random", noise, None
        ),
        "no_detector": good,  # a run directory without detector or drift reference
    }
    return {k: load_model_ref(str(p)) for k, p in paths.items()}


@pytest.fixture(scope="module")
def test_set() -> ImageDataset:
    return load_dataset("fashion-mnist", "test", limit=200)


def _by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks}


def test_a_much_less_robust_candidate_fails_both_checks_with_the_values(
    models: dict[str, LoadedModel], test_set: ImageDataset
) -> None:
    data = robustness_evaluation(models["random"], models["production"], test_set, GATE)
    assert data is not None and data["images"] == 200
    checks = _by_name(robustness_checks(json.loads(json.dumps(data)), GATE))
    mce = checks["mce_change"]
    assert not mce["passed"] and mce["value"] > 50 and mce["threshold"] == 25.0
    assert "of production's errors" in mce["detail"]
    assert "3 corruptions x 2 severities, 200 images" in mce["detail"]
    ood = [c for name, c in checks.items() if name.startswith("ood_auroc_change/")]
    assert {c["name"] for c in ood} == {
        "ood_auroc_change/mnist", "ood_auroc_change/uniform_noise", "ood_auroc_change/photos"
    }  # fmt: skip
    noise = checks["ood_auroc_change/uniform_noise"]  # its detector calls noise "normal"
    assert not noise["passed"] and noise["value"] < -0.5 and noise["threshold"] == -0.05
    # The same corrupted pixels for both: production's own numbers are in the data.
    prod = data["corruptions"]["baseline"]["accuracy"]
    cand = data["corruptions"]["candidate"]["accuracy"]
    assert set(prod) == set(cand) == {"gaussian_noise", "contrast", "rotate"}
    assert data["corruptions"]["baseline"]["clean_accuracy"] > 0.6
    assert data["corruptions"]["candidate"]["clean_accuracy"] < 0.3


def test_a_normal_candidate_passes_both_checks(
    models: dict[str, LoadedModel], test_set: ImageDataset
) -> None:
    data = robustness_evaluation(models["normal"], models["production"], test_set, GATE)
    assert data is not None
    checks = robustness_checks(data, GATE)
    assert checks[0]["name"] == "mce_change" and len(checks) == 4
    assert all(c["passed"] for c in checks), checks
    for c in checks[1:]:
        assert c["value"] >= -0.05 and "(mahalanobis)" in c["detail"]


def test_production_against_itself_changes_nothing(
    models: dict[str, LoadedModel], test_set: ImageDataset
) -> None:
    gate = GateSection(max_mce_increase=0.0, max_ood_auroc_drop=0.0, robustness_images=100,
                       robustness_severities=(3,), robustness_corruptions=("fog",))  # fmt: skip
    data = robustness_evaluation(models["production"], models["production"], test_set, gate)
    assert data is not None
    checks = robustness_checks(data, gate)
    assert [c["value"] for c in checks] == pytest.approx([0.0, 0.0, 0.0, 0.0], abs=1e-9)
    assert all(c["passed"] for c in checks)


def test_a_candidate_without_a_detector_fails_the_ood_check_with_the_reason(
    models: dict[str, LoadedModel], test_set: ImageDataset
) -> None:
    gate = GateSection(max_ood_auroc_drop=0.02, robustness_images=50)
    data = robustness_evaluation(models["no_detector"], models["production"], test_set, gate)
    assert data is not None and "corruptions" not in data  # only what is configured runs
    [check] = robustness_checks(data, gate)
    assert check["name"] == "ood_auroc" and not check["passed"] and check["value"] is None
    assert "unavailable" in check["detail"] and "no drift reference" in check["detail"]


def test_without_a_baseline_the_values_are_reported_and_never_fail(
    models: dict[str, LoadedModel], test_set: ImageDataset
) -> None:
    data = robustness_evaluation(models["random"], None, test_set, GATE)
    assert data is not None
    checks = _by_name(robustness_checks(data, GATE))
    assert set(checks) == {"mce", "ood_auroc/mnist", "ood_auroc/uniform_noise", "ood_auroc/photos"}
    assert all(c["passed"] and c["threshold"] is None for c in checks.values())
    assert checks["mce"]["value"] > 60  # a random model's mean error, in %
    assert "no baseline" in checks["mce"]["detail"]


def test_off_by_default_nothing_is_computed_and_no_check_appears(
    models: dict[str, LoadedModel], test_set: ImageDataset
) -> None:
    gate = GateSection()
    assert robustness_evaluation(models["random"], models["production"], test_set, gate) is None
    budget = {"latency_p95_ms": 1.0, "size_mb": 1.0}
    assert [c["name"] for c in gate_checks({}, (), budget, gate)] == ["latency_p95_ms", "size_mb"]


def _report(method: str, aurocs: dict[str, float]) -> dict[str, Any]:
    sets = {k: {method: {"auroc": v, "fpr_at_95_tpr": 0.1}} for k, v in aurocs.items()}
    sizes = dict.fromkeys(aurocs, 100)
    return {"available": True, "method": method, "sets": sets, "set_sizes": sizes,
            "in_distribution_images": 100}  # fmt: skip


def test_production_without_a_detector_reports_the_candidate_and_a_missing_set_is_listed() -> None:
    gate = GateSection(max_ood_auroc_drop=0.02)
    data = {
        "images": 100,
        "ood": {"candidate": _report("energy", {"photos": 0.93}),
                "baseline": {"available": False, "reason": "no OOD detector: old"}},
        "ood_unavailable_sets": {"mnist": "its images are (1, 32, 32)"},
    }  # fmt: skip
    photos, mnist = robustness_checks(data, gate)
    assert photos == {"name": "ood_auroc/photos", "value": 0.93, "threshold": None,
                      "passed": True, "detail": photos["detail"]}  # fmt: skip
    assert "production's detector unavailable (no OOD detector: old)" in photos["detail"]
    assert mnist["name"] == "ood_auroc/mnist" and mnist["value"] is None and mnist["passed"]
    assert "(1, 32, 32)" in mnist["detail"]


def test_a_configured_check_that_was_not_measured_fails_saying_so() -> None:
    gate = GateSection(max_mce_increase=5.0, max_ood_auroc_drop=0.02)
    budget = {"latency_p95_ms": 1.0, "size_mb": 1.0}
    checks = _by_name(gate_checks({}, (), budget, gate, robustness=None))
    for name in ("mce_change", "ood_auroc"):
        assert not checks[name]["passed"] and "measured no robustness" in checks[name]["detail"]


def test_the_pipeline_does_not_bless_a_much_less_robust_candidate_and_says_why(
    models: dict[str, LoadedModel], tmp_path: Path
) -> None:
    registry = f"sqlite:///{tmp_path / 'reg.db'}"
    with open_registry(registry) as store:
        store.register(models["production"].folder, "fashion")
        store.set_alias("fashion", "production", 1, reason="test")
    (tmp_path / "p.toml").write_text(
        f'registry = "{registry}"\n[data]\neval_limit = 500\n[gate]\nmin_accuracy = 0.0\n'
        "max_accuracy_drop_points = 100.0\nmax_class_drop_points = 100.0\nmax_ece = 1.0\n"
        "max_ece_increase = 1.0\nbootstrap_samples = 100\nmax_mce_increase = 25.0\n"
        "max_ood_auroc_drop = 0.05\nrobustness_images = 200\nrobustness_severities = [3]\n"
        'robustness_corruptions = ["contrast", "rotate"]\n'
    )
    config = load_pipeline_config(tmp_path / "p.toml")
    result = run_pipeline(config, name="fashion", candidate=str(models["random"].folder),
                          out_dir=tmp_path / "p")  # fmt: skip
    assert not result.blessed and result.baseline == "fashion:1"
    written = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    checks = _by_name(written["checks"])
    failed = {name for name, c in checks.items() if not c["passed"]}
    assert {"mce_change", "ood_auroc_change/uniform_noise"} <= failed
    # Only robustness checks fail: every other threshold is wide open here.
    assert all(n == "mce_change" or n.startswith("ood_auroc_change/") for n in failed)
    assert checks["mce_change"]["value"] > 25.0 and checks["mce_change"]["threshold"] == 25.0
    with open_registry(registry) as store:
        [record] = store.blessings(result.candidate)
    assert "mce_change" in record.blessing.failed_checks
