"""The OOD detector for an older model (``drift --make-reference``) and in the robustness report.

On the briefly trained resnet8 the export and CLI tests share: ``drift --make-reference``
writes a reference with logits and a detector calibrated on the test split; with both in the
model's folder, ``robustness`` reports AUROC and FPR@95%TPR against MNIST, noise and photos
beside max-softmax; without them it says why the part is unavailable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from resnetkit.cli.main import main
from resnetkit.monitor.ood import OOD_FILE, OODDetector
from tests.export.rundir import trained_run_dir

pytestmark = pytest.mark.slow

QUICK = [
    "--images", "200", "--corruptions", "contrast", "--severities", "1", "--eps", "0.05",
    "--steps", "1", "--device", "cpu", "--no-progress", "--json",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


def test_make_reference_fits_a_detector_the_robustness_report_uses(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = tmp_path / "made"
    argv = ["drift", "--model", str(run_dir), "--data", "fashion-mnist", "--make-reference"]
    assert main([*argv, "--sample", "400", "--out", str(made)]) == 0
    assert OOD_FILE in capsys.readouterr().out
    reference = load_file(str(made / "drift_reference.safetensors"))
    assert reference["logits"].shape == (400, 10)
    detector = OODDetector.load(made / OOD_FILE)
    assert "test split of fashion-mnist" in detector.source and detector.samples == 400

    model = tmp_path / "model"
    shutil.copytree(run_dir, model)
    for name in ("drift_reference.safetensors", OOD_FILE):
        shutil.copy(made / name, model / name)
    out = tmp_path / "report"
    assert main(["robustness", "--model", str(model), "--out", str(out), *QUICK]) == 0
    ood = json.loads((out / "robustness.json").read_text())["ood"]
    assert ood["available"] and ood["method"] == "mahalanobis"
    assert set(ood["sets"]) == {"mnist", "uniform_noise", "photos"}
    for by_method in ood["sets"].values():
        assert set(by_method) == {"mahalanobis", "energy", "combined", "max_softmax"}
        for row in by_method.values():
            assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr_at_95_tpr"] <= 1.0
    assert ood["sets"]["uniform_noise"]["mahalanobis"]["auroc"] > 0.9
    assert ood["sets"]["uniform_noise"]["mahalanobis"]["flagged"] > 0.5
    assert 0.0 <= ood["in_distribution_flag_rate"]["mahalanobis"] <= 0.15


def test_a_model_without_a_detector_reports_the_ood_part_unavailable(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    few = [*QUICK[2:], "--images", "20"]  # the OOD part is decided before any image is scored
    assert main(["robustness", "--model", str(run_dir), "--out", str(out), *few]) == 0
    ood = json.loads((out / "robustness.json").read_text())["ood"]
    assert ood["available"] is False and "no drift reference" in ood["reason"]
