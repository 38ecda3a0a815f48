"""The README's main job, ``scripts/quickstart.py``, end to end, and run twice.

The real recipe trains for minutes; here the same recipe file is shortened (one epoch on a
few thousand images) and the job runs with ``SERVE=0``: it must still train, evaluate,
register, export, quantize, serve one real request and stop, and a second run must reuse all
of it without breaking the registry.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resnetkit.evaluate.precision as precision_policy
from resnetkit.config import load_toml, save_toml
from resnetkit.registry import open_registry
from tests.serve.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def _run(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "quickstart.py")],
        cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_quickstart_ends_with_a_served_model_and_reruns_safely(tmp_path: Path) -> None:
    recipe = load_toml(ROOT / "configs" / "fashion_mnist_fast.toml")
    recipe["epochs"] = 1
    recipe["data"] = {**recipe.get("data", {}), "limit": 2000, "test_limit": 500}
    recipe["optim"] = {**recipe.get("optim", {}), "warmup_epochs": 0.2}
    save_toml(tmp_path / "tiny.toml", recipe)
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {
        "RECIPE": str(tmp_path / "tiny.toml"), "SERVE": "0", "PORT": str(free_port()),
        "RESNETKIT_REGISTRY": registry, "RUN_DIR": str(tmp_path / "run"), "COLUMNS": "160",
    }  # fmt: skip
    first = _run(env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    for text in ("2/6", "test accuracy", "registered fashion-mnist:1", "parity on 256 images",
                 "int8", "smoke request: a test image is", "SERVE=0: stopped"):  # fmt: skip
        assert text in out, (text, out)
    assert (tmp_path / "run" / "plots" / "confusion_matrix.png").is_file()
    second = _run(env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing the trained model" in second.stdout
    assert "fashion-mnist:1 already holds these weights" in second.stdout
    with open_registry(registry) as store:
        assert store.resolve("fashion-mnist@production").version == 1
        assert len(store.list_versions("fashion-mnist")) <= 2  # fp32, and int8 if accepted
        assert store.verify().ok
        assert len(store.history("fashion-mnist", "production")) == 1  # not moved again


@pytest.mark.parametrize(
    ("native_bf16", "expected"),
    [(True, "fashion_mnist_wide.toml"), (False, "fashion_mnist.toml")],
)
def test_full_picks_the_10_minute_recipe_for_the_machine(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: str
) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    monkeypatch.setattr(precision_policy, "cpu_has_fast_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quickstart.full_recipe() == expected
    assert (ROOT / "configs" / expected).is_file()
