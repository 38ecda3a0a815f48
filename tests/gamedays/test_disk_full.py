"""Game day: a full disk under each writer. Every writer fails with one clear line (or, on
the serving path, drops and counts); nothing half-written is left where a reader looks,
and what was saved before is intact and usable."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from resnetkit.cli.main import main
from resnetkit.errors import RegistryError, StorageFull
from resnetkit.fileio import atomic_write, staged
from resnetkit.onnxio import read_metadata
from resnetkit.registry import open_registry
from resnetkit.train import load_checkpoint, train
from tests.export.rundir import trained_run_dir
from tests.gamedays.conftest import fill, tmpfs
from tests.registry.rundirs import make_run_dir
from tests.serve.server import in_process, png
from tests.train.conftest import tiny_config

_PAGE = 4096


def _on_disk(path: Path) -> int:
    """Bytes ``path`` takes on a tmpfs: whole pages."""
    return math.ceil(path.stat().st_size / _PAGE) * _PAGE


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") and p.name != ".filler"]


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_line_and_the_last_checkpoint_resumes(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(epochs=2)
    train(cfg, tmp_path / "reference")
    ckpt = _on_disk(tmp_path / "reference" / "checkpoints" / "latest.pt")
    # Room for epoch 1's latest.pt and best.pt and a few small files (config, metrics), not
    # for the new latest.pt that epoch 2 writes beside the old one before replacing it.
    size_kb = (2 * ckpt + ckpt // 2 + 8 * _PAGE) // 1024
    with tmpfs(tmp_path / "disk", size_kb) as disk:
        run = disk / "run"
        with pytest.raises(StorageFull) as caught:
            train(cfg, run)
        message = str(caught.value)
        assert "\n" not in message and "no space left" in message
        assert "latest.pt" in message and "previous file is unchanged" in message
        assert load_checkpoint(run / "checkpoints" / "latest.pt")["position"]["epoch"] == 1
        assert not _leftovers(run)
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        train(cfg, run, resume=True)  # resumes from epoch 1's checkpoint, exactly
        ours = load_file(run / "model.safetensors")
        theirs = load_file(tmp_path / "reference" / "model.safetensors")
        assert ours.keys() == theirs.keys()
        assert all(bool((ours[k] == theirs[k]).all()) for k in ours)


def test_a_full_disk_leaves_no_partial_export(tmp_path: Path) -> None:
    from resnetkit.export.onnx import export_onnx
    from resnetkit.models import create_model

    model = create_model("resnet8", num_classes=10, in_chans=1, width=0.5)
    with tmpfs(tmp_path / "disk", 64) as disk:
        out = disk / "model.onnx"
        out.write_bytes(b"old")  # an older export at the path stays as it was
        with pytest.raises(StorageFull, match="previous file is unchanged"):
            export_onnx(model, out, input_size=(1, 28, 28))
        assert out.read_bytes() == b"old" and [p.name for p in disk.iterdir()] == ["model.onnx"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))  # shared with tests/cli


@pytest.mark.parametrize(
    "command",
    [["export", "--no-parity"], ["quantize", "--calib", "8", "--test-limit", "50"]],
    ids=["export", "quantize"],
)
def test_a_disk_that_fills_under_export_and_quantize_is_one_line_and_the_old_file_stays(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # 64 KiB: less than either model (fp32 about 300 KB, int8 about 100 KB), so the disk
    # fills in the middle of the write.
    with tmpfs(tmp_path / "disk", 64) as disk:
        out = disk / "model.onnx"
        out.write_bytes(b"an older model")
        assert main([command[0], str(trained), "-o", str(out), *command[1:]]) == 1
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert lines[0] == (
            f"error: cannot write {out}: no space left on its disk (the previous file is "
            "unchanged); free space and retry"
        )
        assert out.read_bytes() == b"an older model"
        assert [p.name for p in disk.iterdir()] == ["model.onnx"]  # no temp, no staged file


def test_quantize_writes_once_so_room_for_one_model_is_enough(
    trained: Path, tmp_path: Path
) -> None:
    from resnetkit.compress import quantize_with_budget
    from resnetkit.export import load_model_ref

    loaded = load_model_ref(str(trained))
    test = loaded.dataset("test", limit=50)
    calib = loaded.calibration_images(8)

    def quantize(out: Path) -> None:
        quantize_with_budget(
            loaded.onnx_path(), out, calib, test.images, test.labels, loaded.spec, budget_points=100
        )

    quantize(tmp_path / "reference.onnx")
    size = _on_disk(tmp_path / "reference.onnx")
    # Room for the model and its temp file's first half: a second write of the whole file
    # (the report added after the fact) would not fit.
    with tmpfs(tmp_path / "disk", (size + size // 2 + 2 * _PAGE) // 1024) as disk:
        out = disk / "int8.onnx"
        quantize(out)
        assert read_metadata(out)["quantization_accepted"] is True
        assert read_metadata(out)["quantization_report"]["int8_size_bytes"] > 0
        assert [p.name for p in disk.iterdir()] == ["int8.onnx"]


def test_a_staged_output_on_a_full_disk_names_its_path_and_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", 16) as disk:
        out = disk / "model.onnx"
        out.write_bytes(b"old")
        with pytest.raises(StorageFull) as caught, staged(out) as stage:
            atomic_write(stage, lambda tmp: tmp.write_bytes(b"x" * 64 * 1024))
        assert str(caught.value) == (
            f"cannot write {out}: no space left on its disk (the previous file is unchanged); "
            "free space and retry"
        )
        assert out.read_bytes() == b"old" and [p.name for p in disk.iterdir()] == ["model.onnx"]


def test_a_full_artifact_disk_registers_nothing_and_verify_stays_clean(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    run = make_run_dir(tmp_path / "run")
    with tmpfs(tmp_path / "artifacts", 256) as artifacts, open_registry(url, artifacts) as store:
        with pytest.raises(RegistryError, match="no space left in the artifact folder"):
            store.register(run, "fmnist")
        assert store.list_models() == []
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM model_versions").scalar() == 0
        assert not [p for p in artifacts.rglob("*") if p.is_file()]  # no temp, no orphan
        report = store.verify()
        assert report.checked_versions == 0 and not report.problems


@pytest.mark.slow
def test_a_full_log_disk_drops_and_counts_while_requests_are_answered(tmp_path: Path) -> None:
    base = tmp_path
    run = make_run_dir(base / "run")
    with tmpfs(base / "logs", 128) as logs:
        fill(logs)
        with in_process([str(run)], prediction_log=logs / "predictions.jsonl") as (client, _):
            image = png(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
            for _ in range(20):
                answer = client.post(
                    "/v1/predict", content=image, headers={"content-type": "image/png"}
                )
                assert answer.status_code == 200, answer.text
            metrics = client.get("/metrics").text
    dropped = [
        line for line in metrics.splitlines()
        if line.startswith("resnetkit_prediction_log_dropped_total{") and "write_error" in line
    ]  # fmt: skip
    assert dropped and sum(float(line.rsplit(" ", 1)[1]) for line in dropped) > 0, metrics
