"""Edge models registered as artifacts of the version whose weights they were exported from."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from resnetkit.cli.main import main
from resnetkit.export import load_model_ref
from resnetkit.export.edge import export_edge
from resnetkit.registry import open_registry
from tests.export.rundir import trained_run_dir


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shared run directory and a Core ML package of it (the cheapest edge export)."""
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    out = tmp_path_factory.mktemp("edge") / "model.mlpackage"
    export_edge(load_model_ref(str(run)), out, fmt="coreml")
    return run, out


def test_register_stores_the_edge_model_with_the_version(
    package: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = package
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    argv = ["registry", "register", str(run), "--name", "fashion", "--registry", db, "--json"]
    assert main([*argv, "--artifact", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "model.mlpackage.zip" in {a["filename"] for a in info["artifacts"]}
    with open_registry(db, create=False) as store:
        folder = store.checkout("fashion:1", tmp_path / "checkout")
    with zipfile.ZipFile(folder / "model.mlpackage.zip") as archive:
        assert "model.mlpackage/Manifest.json" in archive.namelist()


def test_an_edge_model_from_other_weights_is_refused(
    package: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = package
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    weights = load_file(str(other / "model.safetensors"))
    first = next(iter(weights))
    weights[first] = weights[first] + 1  # the same model, other weights
    save_file(weights, str(other / "model.safetensors"))
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    argv = ["registry", "register", str(other), "--name", "fashion", "--registry", db]
    assert main([*argv, "--artifact", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "was exported from other weights" in err
    assert "\n" not in err
    assert not (tmp_path / "registry.db-artifacts").exists() or not any(
        (tmp_path / "registry.db-artifacts").rglob("*.zip")
    )
