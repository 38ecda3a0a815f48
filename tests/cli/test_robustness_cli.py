"""``resnetkit robustness`` on a real, briefly trained model: the report, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from resnetkit.cli.main import main
from tests.export.rundir import trained_run_dir

# A small, fast report: two corruptions, two severities, two eps, 5 PGD steps.
SMALL = [
    "--images", "200", "--corruptions", "contrast,rotate", "--severities", "1,5",
    "--eps", "0.05,0.2", "--steps", "5", "--device", "cpu", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


@pytest.mark.slow
def test_report_with_baseline_has_mce_attacks_and_plots(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = trained_run_dir(str(run_dir.parent), seed=1)
    out = tmp_path / "report"
    argv = ["robustness", "--model", str(run_dir), "--baseline", str(baseline), "--out", str(out)]
    assert main([*argv, *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "mCE" in printed and "relative mCE" in printed and "pgd" in printed
    report = json.loads((out / "robustness.json").read_text())
    assert report["dataset"]["images"] == 200
    corr = report["corruptions"]["model"]
    assert corr["severities"] == [1, 5] and set(corr["accuracy"]) == {"contrast", "rotate"}
    for accs in corr["accuracy"].values():
        assert accs[0] >= accs[1]  # severity 5 hurts at least as much as severity 1
    errors = report["corruption_errors"]
    assert errors["normalised"] is True
    base = report["corruptions"]["baseline"]["accuracy"]
    ce = (2 - sum(corr["accuracy"]["rotate"])) / (2 - sum(base["rotate"]))
    assert errors["ce"]["rotate"] == pytest.approx(ce)
    assert errors["mce"] == pytest.approx(sum(errors["ce"].values()) / 2)
    fgsm, pgd = report["attacks"]["accuracy"]["fgsm"], report["attacks"]["accuracy"]["pgd"]
    assert report["clean_accuracy"] >= fgsm[0] >= pgd[0]
    assert fgsm[0] >= fgsm[1] and pgd[0] >= pgd[1]
    worst = report["attacks"]["accuracy"]["worst_case"]
    assert worst == sorted(worst, reverse=True)  # a budget adversary: never better with more eps
    assert all(w <= min(f, p) for w, f, p in zip(worst, fgsm, pgd, strict=True))
    assert "worst case within eps" in printed
    assert (out / "corruptions.png").stat().st_size > 0
    assert (out / "attacks.png").stat().st_size > 0


@pytest.mark.slow
def test_without_baseline_ce_is_unnormalised_and_says_so(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    argv = ["robustness", "--model", str(run_dir), "--out", str(out), "--json", *SMALL]
    argv[argv.index("--corruptions") + 1] = "fog"
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    errors = report["corruption_errors"]
    assert errors["normalised"] is False and "unnormalised" in errors["note"]
    accs = report["corruptions"]["model"]["accuracy"]["fog"]
    assert errors["mce"] == pytest.approx(1 - sum(accs) / 2)
    assert "warning" in report  # 200 images: fewer than the report is meant for
    assert json.loads((out / "robustness.json").read_text()) == report


def _onnx(run_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "-o", str(path), "--json"]) == 0
    return path


def _other_size(run_dir: Path, tmp_path: Path) -> Path:
    """The same weights, carded for 32x32 inputs (a ResNet pools globally: it loads)."""
    other = tmp_path / "run32"
    shutil.copytree(run_dir, other)
    card = json.loads((other / "model.json").read_text())
    card["preprocessing"]["size"] = [32, 32]
    (other / "model.json").write_text(json.dumps(card))
    return other


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eps", "0.1,1.5"], "--eps is a fraction of the pixel range"),
        (["--eps", "-0.1"], "--eps is a fraction of the pixel range"),
        (["--severities", "0,3"], "severity 0 is out of range"),
        (["--severities", "6"], "severity 6 is out of range"),
        (["--corruptions", "snow"], "--corruptions 'snow'"),
        (["--images", "0"], "--images must be at least 1"),
        ("onnx", "ONNX model without torch weights; the attacks need gradients"),
        ("size", "has 1x28x28 images but the model expects 1x32x32"),
    ],
)
def test_bad_input_is_one_error_line_before_any_work(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str] | str,
    message: str,
) -> None:
    model = run_dir
    if extra == "onnx":
        model, extra = _onnx(run_dir, tmp_path), []
    elif extra == "size":
        model, extra = _other_size(run_dir, tmp_path), []
    capsys.readouterr()
    out = tmp_path / "report"
    argv = ["robustness", "--model", str(model), "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()
