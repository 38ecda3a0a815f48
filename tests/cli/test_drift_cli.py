"""``resnetkit drift`` as a user runs it: its messages speak of the user's data and flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetkit.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
_TINY = [
    "--model", "resnet8", "--model-arg", "width=0.5",
    "--data", "fashion-mnist", "--limit", "1088", "--val-fraction", "0.0588",
    "--batch-size", "128", "--num-threads", "1", "--no-progress", "--epochs", "1", "--no-eval",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet8 after one short epoch, with the drift reference training writes."""
    out = tmp_path_factory.mktemp("drift-cli") / "run"
    assert main(["train", *_TINY, "--out", str(out)]) == 0
    return out


def _photos(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("bags" if i % 2 else "shoes")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_too_few_images_names_the_data_and_the_split_not_a_window(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", 48)  # class folders: a share is held out as test
    assert main(["drift", "--model", str(run), "--data", str(photos), "--out", str(tmp_path)]) == 1
    err = _error(capsys)
    assert f"--data {photos} has" in err and "test split" in err and "--split train" in err
    assert "window" not in err


def test_a_missing_reference_file_points_to_make_reference(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["drift", "--model", str(run), "--data", "fashion-mnist", "--out", str(tmp_path)]
    assert main([*argv, "--reference", str(tmp_path / "missing.safetensors")]) == 1
    err = _error(capsys)
    assert "missing.safetensors" in err and "--make-reference" in err and "retrain" not in err


def test_the_printed_report_is_the_one_the_readme_shows(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "report"
    argv = ["drift", "--model", str(run), "--data", "mnist", "--sample", "200", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    readme = (ROOT / "README.md").read_text()
    example = readme.split("resnetkit drift --model", 1)[1].split("```text", 1)[1].split("```")[0]
    shown = example.strip("\n").splitlines()
    header = next(line for line in printed if "detector" in line and "p-value" in line)
    assert header in shown  # the same table
    verdict = next(line for line in printed if line.startswith(("drift detected", "no drift")))
    assert verdict.startswith("drift detected: mnist (test, 200 images) against ")
    assert any(line.startswith("drift detected: mnist (test, 1000 images)") for line in shown)
    assert printed[-1] == f"wrote {out / 'drift.json'} and {out / 'drift.png'}"
    assert shown[-1] == "wrote drift-report/drift.json and drift-report/drift.png"
