"""The plain install (no extras) is the serving runtime: a fresh virtual environment with
``pip install resnetkit`` serves an ONNX model without PyTorch, and a command that needs
PyTorch says which extra to install.

Slow (a real ``pip install`` into a new venv, from pip's cache when the wheels are there).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import httpx
import numpy as np
import pytest

from resnetkit.export import load_model_ref
from tests import early
from tests.export.rundir import trained_run_dir
from tests.serve.server import free_port, png

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
_IGNORED = shutil.ignore_patterns(
    ".venv*", ".git", "runs", "*.db", "*.egg-info", ".*_cache", ".hypothesis", ".schemathesis"
)


def start_early(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The install (most of a minute of pip) beside the tests before this module's
    (tests/early.py)."""
    if not early.started("plain-venv"):
        folder = tmp_path_factory.mktemp("plain") / "venv"
        source = tmp_path_factory.mktemp("src") / "resnetkit"
        early.start("plain-venv", functools.partial(_install_plain, folder, source))


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    start_early(tmp_path_factory)
    return Path(early.result("plain-venv"))


def _install_plain(folder: Path, source: Path) -> Path:
    """``pip install`` of a copy of the tracked sources (the working tree's build folders stay
    untouched) into a new virtual environment at ``folder``."""
    venv.EnvBuilder(with_pip=True).create(folder)
    shutil.copytree(ROOT, source, ignore=_IGNORED)
    install = subprocess.run(
        [folder / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return folder


def _python(venv_dir: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_dir / "bin" / "python", "-c", code], capture_output=True, text=True, timeout=120
    )


def test_the_plain_install_has_no_torch(plain_venv: Path) -> None:
    probe = _python(plain_venv, "import importlib.util as u; print(u.find_spec('torch'))")
    assert probe.stdout.strip() == "None", probe.stderr


def test_the_plain_install_serves_an_onnx_model(
    plain_venv: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    model = tmp_path / "fashion.onnx"
    shutil.copy(load_model_ref(run).onnx_path(), model)
    port = free_port()
    env = {**os.environ, "RESNETKIT_CACHE": str(tmp_path / "cache")}
    server = subprocess.Popen(
        [plain_venv / "bin" / "resnetkit", "serve", str(model), "--port", str(port),
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        answer = _first_answer(f"http://127.0.0.1:{port}/v1/predict", server)
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0].decode(errors="replace")
    assert answer["model"] == "fashion" and len(answer["predictions"]) == 5, output
    assert server.returncode == 0, output


def test_a_command_that_needs_torch_names_the_extra(plain_venv: Path) -> None:
    run = subprocess.run(
        [plain_venv / "bin" / "resnetkit", "train", "--model", "resnet8", "--data", "synthetic",
         "--epochs", "1", "--out", "/tmp/never-written"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: resnetkit train needs torch, which this install lacks: "
        "pip install 'resnetkit[train]'"
    ]
    assert not Path("/tmp/never-written").exists()


def _first_answer(url: str, server: subprocess.Popen[bytes]) -> dict[str, object]:
    body = png(np.zeros((28, 28), np.uint8))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode}")
        try:
            answer = httpx.post(url, content=body, headers={"Content-Type": "image/png"})
            if answer.status_code == 200:
                return dict(answer.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("no answer in 120 s")
