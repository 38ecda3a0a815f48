"""The backend interface: five backends, one answer; timing and memory helpers."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from resnetkit.compress import fold_batchnorm, quantize_onnx
from resnetkit.data import PreprocessingSpec
from resnetkit.export import (
    InferenceBackend,
    OnnxBackend,
    TorchBackend,
    benchmark_backend,
    export_onnx,
    measure_latency,
    peak_rss_delta,
)
from resnetkit.models import load_model
from tests.export.rundir import real_test_images, trained_run_dir


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> dict[str, InferenceBackend]:
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    model, card = load_model(run)
    spec = card.spec()
    folder = tmp_path_factory.mktemp("backends")
    fp32 = export_onnx(model, folder / "fp32.onnx", input_size=(1, 28, 28))
    calib = real_test_images(spec, limit=64)  # only to calibrate this test model
    int8 = quantize_onnx(fp32, folder / "int8.onnx", calib, method="minmax")
    folded = fold_batchnorm(model, channels_last=True)
    return {
        "torch-eager": TorchBackend(model),
        "torch-folded-cl": TorchBackend(folded, name="f", channels_last=True),
        "torch-bf16": TorchBackend(
            folded, name="b", channels_last=True, autocast_dtype=torch.bfloat16
        ),
        "onnx-fp32": OnnxBackend(fp32, threads=2),
        "onnx-int8": OnnxBackend(int8, name="onnx-int8", threads=2),
    }


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    spec = PreprocessingSpec((28, 28), 1, (0.286,), (0.353,))
    return real_test_images(spec, limit=256)


@pytest.mark.parametrize(
    ("name", "min_agreement"),
    [
        ("torch-folded-cl", 1.0),
        ("onnx-fp32", 1.0),
        ("torch-bf16", 0.95),
        ("onnx-int8", 0.9),
    ],
)
def test_every_backend_agrees_with_eager_torch_on_real_images(
    backends: dict[str, InferenceBackend], images: torch.Tensor, name: str, min_agreement: float
) -> None:
    expected = backends["torch-eager"].predict(images)
    got = backends[name].predict(images.numpy())  # NumPy in, as the server will pass
    assert got.dtype == np.float32 and got.shape == expected.shape == (256, 10)
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    assert agreement >= min_agreement
    assert isinstance(backends[name], InferenceBackend)
    assert backends[name].load_time_s >= 0 and backends[name].size_bytes > 0


def test_int8_file_is_smaller_than_fp32(backends: dict[str, InferenceBackend]) -> None:
    assert backends["onnx-int8"].size_bytes < backends["onnx-fp32"].size_bytes / 2


def test_latency_percentiles_are_ordered_and_throughput_consistent(
    backends: dict[str, InferenceBackend], images: torch.Tensor
) -> None:
    stats = measure_latency(backends["onnx-fp32"], images[:8].numpy(), min_time_s=0.05)
    assert stats.iterations >= 10 and stats.batch_size == 8
    assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.throughput == pytest.approx(8 / (stats.p50_ms / 1e3))


def test_benchmark_backend_reports_load_time_memory_and_each_batch_size(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    result = benchmark_backend(
        lambda: TorchBackend(load_model(run)[0]), (1, 28, 28), (1, 4), min_time_s=0.02
    )
    assert [s.batch_size for s in result.latencies] == [1, 4]
    assert result.load_time_s > 0 and result.to_dict()["latencies"][1]["throughput"] > 0


def test_peak_rss_delta_sees_a_large_allocation() -> None:
    # A fresh anonymous mapping, touched page by page: malloc could hand out memory that an
    # earlier test freed but the allocator kept resident, which adds nothing to the peak.
    with peak_rss_delta() as rss, mmap.mmap(-1, 64 * 2**20) as block:
        np.frombuffer(block, dtype=np.uint8)[::4096] = 1
    assert rss["bytes"] is not None and rss["bytes"] >= 48 * 2**20


def test_no_backend_changes_the_process_thread_count(
    backends: dict[str, InferenceBackend], images: torch.Tensor
) -> None:
    # Two models in one process (stable and canary) must not fight over torch's one pool:
    # backends use it as the process set it, and report it.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        backend = TorchBackend(torch.nn.Flatten())
        for other in backends.values():
            other.predict(images[:2])
        backend.predict(images[:2])
        assert torch.get_num_threads() == 1 and backend.threads == 1
        assert backends["onnx-fp32"].threads == 2  # ONNX Runtime: the session's own pool
    finally:
        torch.set_num_threads(before)


def test_cuda_request_without_cuda_provider_warns_and_runs_on_cpu(
    backends: dict[str, InferenceBackend], images: torch.Tensor
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    path = backends["onnx-fp32"].path  # type: ignore[attr-defined]
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider"):
        backend = OnnxBackend(path, device="cuda", threads=1)
    assert backend.device == "cpu" and backend.predict(images[:3]).shape == (3, 10)


def test_torch_backend_runs_where_the_model_is(images: torch.Tensor) -> None:
    backend = TorchBackend(torch.nn.Flatten())  # no parameters: default device
    assert backend.device == "cpu"
    meta = TorchBackend(torch.nn.Linear(2, 2, device="meta"))
    assert meta.device == "meta"  # never forced to the CPU
