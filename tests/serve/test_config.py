"""ServeConfig and build_app: one typed config builds the server; the ONNX runtime is torch-free.

In-process where no process boundary is the subject; the torch-free check inspects a real
server process's memory map, since only a process can prove what it never loaded.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from resnetkit.errors import ConfigError, MissingDependency
from resnetkit.export import load_model_ref
from resnetkit.serve.config import ServeConfig, build_app
from tests.export.rundir import trained_run_dir
from tests.serve.server import png, serving


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8 ONNX file of a briefly trained Fashion-MNIST model, as a user would serve."""
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    out = tmp_path_factory.mktemp("onnx") / "fashion-int8.onnx"
    shutil.copy(load_model_ref(run).int8_path(calibration=16), out)
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"refs": ()}, "at least one model"),
        ({"port": 70000}, "--port must be 0..65535"),
        ({"grpc_port": 8000}, "--grpc-port and --port are both 8000"),
        ({"backend": "tensorrt"}, "--backend must be one of"),
        ({"max_batch_size": 0}, "--max-batch-size must be at least 1"),
        ({"timeout_ms": 0}, "--timeout-ms must be more than 0"),
        ({"queue_size": 4, "max_batch_size": 8}, "--queue-size must be at least"),
        ({"prediction_log_rate": 1.5}, "--prediction-log-rate must be in"),
        ({"log_images": True}, "--log-images needs --prediction-log"),
        ({"max_queue_wait_ms": -1.0}, "--max-queue-wait-ms must be more than 0"),
    ],
)
def test_bad_settings_are_one_clear_error_naming_the_flag(
    changes: dict[str, object], message: str
) -> None:
    settings: dict[str, object] = {"refs": ("m.onnx",), **changes}
    with pytest.raises(ConfigError, match=message):
        ServeConfig(**settings)  # type: ignore[arg-type]


def test_the_cli_defaults_are_the_configs(onnx_file: Path) -> None:
    from resnetkit.cli.main import build_parser
    from resnetkit.cli.serve import config_from_args

    args = build_parser("serve").parse_args(["serve", str(onnx_file)])
    assert config_from_args(args) == ServeConfig(refs=(str(onnx_file),))


@pytest.fixture(scope="module")
def client(onnx_file: Path) -> Iterator[TestClient]:
    app = build_app(ServeConfig(refs=(str(onnx_file),), threads=1, warmup_batches=1))
    with TestClient(app) as c:
        deadline = time.monotonic() + 120  # the lifespan loads the model in the background
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c


def test_build_app_serves_in_process_with_every_route(client: TestClient, onnx_file: Path) -> None:
    from resnetkit.data import load_dataset

    assert client.get("/readyz").status_code == 200
    image = load_dataset("fashion-mnist", "test", limit=1).images[0, 0].numpy()
    answer = client.post("/v1/predict", content=png(image), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == onnx_file.stem
    assert "resnetkit_cold_start_seconds" in client.get("/metrics").text


def test_grad_cam_on_an_onnx_model_is_a_clear_4xx(client: TestClient, onnx_file: Path) -> None:
    image = png(np.zeros((28, 28), np.uint8))
    answer = client.post(
        f"/v1/models/{onnx_file.stem}/explain",
        content=image,
        headers={"Content-Type": "image/png"},
    )
    assert answer.status_code == 400 and "without torch weights" in answer.json()["error"]


def test_missing_torch_names_the_extra() -> None:
    error = MissingDependency.for_module("torch", "resnetkit train")
    assert str(error) == (
        "resnetkit train needs torch, which this install lacks: pip install 'resnetkit[train]'"
    )


@pytest.mark.slow
def test_serving_an_onnx_file_never_loads_torch(onnx_file: Path, tmp_path: Path) -> None:
    with serving([str(onnx_file), "--threads", "1"], tmp_path / "server.log") as server:
        answer = httpx.post(
            f"{server.url}/v1/predict",
            content=png(np.zeros((28, 28), np.uint8)),
            headers={"Content-Type": "image/png"},
        )
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert answer.status_code == 200, answer.text
    assert "libtorch" not in maps, "the ONNX serving process mapped libtorch"
    # Nor FastAPI's pydantic: 0.3 s of imports the serving path does not need (cold start).
    assert "pydantic_core" not in maps, "the serving process imported pydantic"
