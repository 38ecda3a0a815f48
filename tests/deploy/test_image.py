"""The ``serve`` container image, built here from Debian's packages and run here.

``scripts/build_image.py`` makes the root filesystem with mmdebstrap and commits it with
buildah; the image then runs under ``buildah run --isolation chroot`` (no daemon, no
network namespace: it listens on the host's loopback), as uid 10001, with the model
mounted read-only, and answers KServe V2 health and inference from the host.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from resnetkit.export import load_model_ref
from tests import early
from tests.export.rundir import trained_run_dir

ROOT = Path(__file__).resolve().parents[2]
SERVE_BUDGET_BYTES = 350 * 10**6
STARTUP_S = 60.0

HAVE_TOOLS = bool(shutil.which("mmdebstrap") and shutil.which("buildah"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_TOOLS, reason="mmdebstrap and buildah are not installed (make system-deps)"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="building a root filesystem needs root"),
]


def _buildah(*args: str, check: bool = True) -> str:
    driver = os.environ.get("STORAGE_DRIVER", "vfs")
    proc = subprocess.run(
        ["buildah", "--storage-driver", driver, *args], capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"buildah {args[0]} failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip()


def start_early(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The image build (most of a minute, mostly unpacking and pip) beside the tests before
    this module's (tests/early.py)."""
    if HAVE_TOOLS and os.geteuid() == 0 and not early.started("serve-image"):
        build = runpy.run_path(str(ROOT / "scripts" / "build_image.py"))
        out = tmp_path_factory.mktemp("image")
        early.start(
            "serve-image", functools.partial(build["build"], build["TARGETS"]["serve"], out)
        )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Any:
    start_early(tmp_path_factory)
    return early.result("serve-image")


@pytest.fixture(scope="module")
def container(image: Any) -> Iterator[str]:
    name = _buildah("from", "--quiet", f"oci-archive:{image.archive}")
    try:
        yield name
    finally:
        _buildah("rm", name, check=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 model, readable by the image's unprivileged user."""
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    folder = tmp_path_factory.mktemp("models")
    shutil.copy(load_model_ref(run).int8_path(calibration=16), folder / "fashion-int8.onnx")
    folder.chmod(0o755)
    (folder / "fashion-int8.onnx").chmod(0o644)
    for parent in folder.parents:  # pytest's temporary folders are private to root
        if parent == Path("/tmp") or parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_serve_image_is_within_its_size_budget_and_carries_no_torch(image: Any) -> None:
    assert image.size_bytes <= SERVE_BUDGET_BYTES, f"{image.size_bytes / 1e6:.0f} MB"
    assert image.archive.is_file() and not list(image.archive.parent.glob("*.part"))
    assert "resnetkit" in image.packages and "onnxruntime" in image.packages
    assert not {"torch", "scipy", "matplotlib", "onnx"} & set(image.packages)
    recorded = json.loads(image.archive.with_suffix(".json").read_text())
    assert recorded["size_bytes"] == image.size_bytes and recorded["target"] == "serve"


def test_the_image_runs_as_a_user_with_no_shell(container: str) -> None:
    config = json.loads(_buildah("inspect", "--type", "container", container))["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/resnetkit/bin/resnetkit"]
    assert {"8000/tcp", "8001/tcp"} <= set(config["ExposedPorts"])
    mount = Path(_buildah("mount", container))
    try:
        assert not (mount / "bin" / "sh").exists() and not (mount / "usr" / "bin" / "apt").exists()
        assert (mount / "etc" / "passwd").read_text().count(":10001:") == 1
    finally:
        _buildah("umount", container, check=False)


def test_the_image_serves_the_int8_model_over_kserve_v2(container: str, model_dir: Path) -> None:
    port = _free_port()
    config = json.loads(_buildah("inspect", "--type", "container", container))["OCIv1"]["config"]
    command = [*config["Entrypoint"], "serve", "/models/fashion-int8.onnx", f"--port={port}"]
    driver = os.environ.get("STORAGE_DRIVER", "vfs")
    proc = subprocess.Popen(
        ["buildah", "--storage-driver", driver, "run", "--isolation", "chroot",
         "--network", "host", "--volume", f"{model_dir}:/models:ro", container, "--", *command],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{url}/v2/health/ready", timeout=2).status_code
            except httpx.TransportError:
                ready = None
            if ready == 200:
                break
            time.sleep(0.25)
        assert ready == 200, f"not ready; server said:\n{_output(proc)}"
        pixels = np.zeros((2, 28, 28, 1), dtype=np.uint8)
        pixels[1, 8:20, 8:20] = 255
        body = {
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": list(pixels.shape),
                        "data": pixels.ravel().tolist()}],
        }  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/fashion-int8/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert outputs["probabilities"]["shape"] == [2, 10]
        assert np.isclose(np.sum(outputs["probabilities"]["data"][:10]), 1.0, atol=1e-4)
    finally:
        # As the kubelet does: SIGTERM to the server itself (buildah run would SIGKILL it).
        server = _server_pid(f"--port={port}")
        if server is not None:
            os.kill(server, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = _output(proc)
    assert server is not None and proc.returncode == 0, log  # a clean, drained stop


def _server_pid(marker: str) -> int | None:
    """The pid of the image's server process (the one whose command line has ``marker``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and any(a.endswith(b"python3.11") for a in argv[:1]):
            return int(entry.name)
    return None


def _output(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.kill()
    return (proc.communicate()[0] or "")[-3000:]
