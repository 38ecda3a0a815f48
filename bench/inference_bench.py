"""Inference speed of every backend beside torch eager fp32, with the FLOP floor.

For each model (default resnet18 and resnet50 at 224x224, random weights: speed does not
depend on them) and each backend (torch eager fp32, torch BN-folded + channels_last, torch
bf16 autocast, ONNX Runtime fp32, ONNX Runtime int8 with u8 activations), it measures load
time, weights size, peak RSS added, and latency p50/p95/p99 and throughput per batch size.
The same run measures the machine's peak fp32 GFLOP/s (matmul and a ResNet-like conv) and
int8 GOP/s (ONNX Runtime MatMulInteger, u8 x s8 and s8 x s8), so the floor
``MACs x 2 / peak`` and the fraction of it reached come from this machine, this load.

    .venv/bin/python bench/inference_bench.py            # full run (minutes)
    .venv/bin/python bench/inference_bench.py --quick    # batch 1 and 32, few iterations
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from machine import best_time_s, describe, machine
from onnx import TensorProto, helper

from resnetkit.compress import fold_batchnorm, quantize_onnx
from resnetkit.export import (
    BackendBenchmark,
    InferenceBackend,
    OnnxBackend,
    TorchBackend,
    benchmark_backend,
    default_threads,
    export_onnx,
)
from resnetkit.models import create_model, profile

BASELINE = "torch-eager"


def peak_fp32_gflops(repeats: int = 3) -> dict[str, float]:
    """Best GFLOP/s of a 2048^3 matmul and of a 3x3 256-channel conv (channels_last)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = 2 * 2048**3 / best_time_s(lambda: torch.mm(a, b), repeats) / 1e9
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    conv = conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(32, 256, 28, 28).contiguous(memory_format=torch.channels_last)
    flops = 2 * 32 * 256 * 256 * 9 * 28 * 28
    with torch.inference_mode():
        cv = flops / best_time_s(lambda: conv(x), repeats) / 1e9
    return {"matmul": mm, "conv": cv}


def _matmul_integer_model(a_type: int, n: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "mm",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
        [
            helper.make_tensor(
                "B", TensorProto.INT8, [n, n], np.ones(n * n, np.int8).tobytes(), True
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def peak_int8_gops(threads: int, n: int = 2048, repeats: int = 3) -> dict[str, float]:
    """Best GOP/s of ONNX Runtime's MatMulInteger, u8 x s8 (VNNI) and s8 x s8."""
    out = {}
    for label, a_type, dtype in (
        ("u8s8", TensorProto.UINT8, np.uint8),
        ("s8s8", TensorProto.INT8, np.int8),
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(_matmul_integer_model(a_type, n), options)
        a = np.ones((n, n), dtype=dtype)
        out[label] = (
            2 * n**3 / best_time_s(lambda s=session, x=a: s.run(None, {"A": x}), repeats) / 1e9
        )
    return out


def _factories(
    name: str, workdir: Path, threads: int, s8: bool
) -> dict[str, Callable[[], InferenceBackend]]:
    model = create_model(name).eval()
    size = (3, 224, 224)
    fp32 = export_onnx(model, workdir / f"{name}.onnx", input_size=size)
    calib = torch.randn((16, *size), generator=torch.Generator().manual_seed(0))
    int8 = quantize_onnx(fp32, workdir / f"{name}-int8.onnx", calib, method="minmax")
    folded = fold_batchnorm(model, channels_last=True)
    torch.set_num_threads(threads)  # torch has one intra-op pool per process: set it once
    factories: dict[str, Callable[[], InferenceBackend]] = {
        "torch-eager": lambda: TorchBackend(model),
        "torch-folded-cl": lambda: TorchBackend(folded, name="torch-folded-cl", channels_last=True),
        "torch-bf16": lambda: TorchBackend(
            folded, name="torch-bf16", channels_last=True, autocast_dtype=torch.bfloat16
        ),
        "onnx-fp32": lambda: OnnxBackend(fp32, name="onnx-fp32", threads=threads),
        "onnx-int8": lambda: OnnxBackend(int8, name="onnx-int8", threads=threads),
    }
    if s8:
        s8_path = quantize_onnx(
            fp32, workdir / f"{name}-s8.onnx", calib, method="minmax", activation_type="s8"
        )
        factories["onnx-int8-s8act"] = lambda: OnnxBackend(
            s8_path, name="onnx-int8-s8act", threads=threads
        )
    return factories


def _print_model(
    name: str,
    macs: int,
    results: list[BackendBenchmark],
    peaks: dict[str, float],
) -> None:
    fp32_peak = max(peaks["matmul"], peaks["conv"])
    int8_peak = peaks["u8s8"]
    base = {s.batch_size: s.throughput for r in results if r.name == BASELINE for s in r.latencies}
    print(f"\n## {name}: {macs / 1e9:.2f} GMACs/image, floor = MACs x 2 / peak")
    head = (
        "| backend | batch | p50 ms | p95 ms | p99 ms | img/s | x eager | floor img/s | % floor |"
    )
    print(head + " load s | weights MB | peak RSS MB |")
    print("|" + "---|" * 12)
    for r in results:
        peak = int8_peak if "int8" in r.name else fp32_peak
        for s in r.latencies:
            floor = peak * 1e9 / (2 * macs)
            rss = f"{r.peak_rss_bytes / 1e6:.0f}" if r.peak_rss_bytes is not None else "n/a"
            print(
                f"| {r.name} | {s.batch_size} | {s.p50_ms:.1f} | {s.p95_ms:.1f} | "
                f"{s.p99_ms:.1f} | {s.throughput:.1f} | {s.throughput / base[s.batch_size]:.2f} | "
                f"{floor:.0f} | {100 * s.throughput / floor:.0f}% | {r.load_time_s:.2f} | "
                f"{r.size_bytes / 1e6:.1f} | {rss} |"
            )


def main() -> None:
    """Run the benchmark and print Markdown tables (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds timed per batch")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 32, short timing")
    parser.add_argument("--s8", action="store_true", help="also int8 with s8 activations")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    batch_sizes = (1, 32) if args.quick else tuple(int(b) for b in args.batch_sizes.split(","))
    min_time, warmup = (0.0, 1) if args.quick else (args.min_time, 3)
    torch.set_num_threads(args.threads)
    print(describe(machine("float32 and int8 (each row says which)")), flush=True)
    print(f"threads {args.threads}, onnx {onnx.__version__}")
    peaks = {**peak_fp32_gflops(), **peak_int8_gops(args.threads)}
    print("measured peaks (G(FL)OP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    report: dict[str, Any] = {"peaks": peaks, "models": {}}
    for name in args.models.split(","):
        macs = profile(create_model(name, device="meta"), (3, 224, 224)).macs
        with tempfile.TemporaryDirectory() as tmp:
            factories = _factories(name, Path(tmp), args.threads, args.s8)
            results = [
                benchmark_backend(f, (3, 224, 224), batch_sizes, warmup=warmup, min_time_s=min_time)
                for f in factories.values()
            ]
        _print_model(name, macs, results, peaks)
        report["models"][name] = {"macs": macs, "results": [r.to_dict() for r in results]}
    print(f"\nload average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
