"""``resnetkit export|quantize|bench``: ONNX with parity, int8 with an accuracy budget, speed.

A ``REF`` is a run directory (``model.json`` + ``model.safetensors``), an ``.onnx`` file, or
a registry reference (``name@alias``, ``name:3``) checked out to a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from resnetkit.compress import (
    CALIBRATION_METHODS,
    fold_batchnorm,
    quantize_onnx,
    quantize_with_budget,
)
from resnetkit.data import PreprocessingSpec, load_dataset, normalize
from resnetkit.errors import ConfigError
from resnetkit.export import (
    DEFAULT_OPSET,
    BackendBenchmark,
    InferenceBackend,
    OnnxBackend,
    TorchBackend,
    benchmark_backend,
    check_parity,
    export_onnx,
    read_onnx_metadata,
)
from resnetkit.models import ModelCard, get_entry, load_model
from resnetkit.registry import PathRef, open_registry, parse_ref


def add_parser(subparsers: Any) -> None:
    """Register the ``export``, ``quantize`` and ``bench`` commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("ref", metavar="REF", help="run directory, .onnx file or name@alias")
    common.add_argument("--registry", metavar="URL", help="registry for name@alias references")
    common.add_argument("--data", default="fashion-mnist", help="dataset for real images")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    exp = subparsers.add_parser("export", parents=[common], help="export a model to ONNX")
    exp.add_argument("-o", "--output", required=True, type=Path, help="the .onnx file")
    exp.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    exp.add_argument("--no-parity", action="store_true", help="skip the parity check")
    exp.add_argument("--parity-images", type=int, default=256, help="real test images")
    exp.set_defaults(func=run_export)

    qua = subparsers.add_parser("quantize", parents=[common], help="static int8 (QDQ) ONNX")
    qua.add_argument("-o", "--output", required=True, type=Path, help="the int8 .onnx file")
    qua.add_argument("--calib", type=int, default=512, help="calibration training images")
    qua.add_argument("--method", choices=CALIBRATION_METHODS, default="percentile")
    qua.add_argument("--budget", type=float, default=1.0, help="max top-1 drop, points")
    qua.add_argument("--test-limit", type=int, default=None, help="test images (default all)")
    qua.add_argument("--seed", type=int, default=0, help="picks the calibration images")
    qua.set_defaults(func=run_quantize)

    ben = subparsers.add_parser("bench", parents=[common], help="latency of every backend")
    ben.add_argument("--batch-sizes", default="1,8,32", help="comma-separated")
    ben.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    ben.add_argument("--threads", type=int, default=None, help="intra-op threads")
    ben.add_argument("--min-time", type=float, default=1.0, help="seconds timed per batch")
    ben.set_defaults(func=run_bench)


# -- references -------------------------------------------------------------------------


@contextlib.contextmanager
def resolve_ref(ref: str, registry: str | None) -> Iterator[Path]:
    """A local path for ``ref``: itself, or a registry version checked out to a temp dir."""
    parsed = parse_ref(ref)
    if isinstance(parsed, PathRef):
        if not parsed.path.exists():
            raise ConfigError(f"{parsed.path} does not exist")
        yield parsed.path
        return
    with (
        tempfile.TemporaryDirectory(prefix="resnetkit-ref-") as tmp,
        open_registry(registry) as store,
    ):
        yield store.checkout(ref, tmp)


def _spec(card: ModelCard) -> PreprocessingSpec:
    if not card.preprocessing:
        raise ConfigError(f"{card.arch}: model.json has no preprocessing spec to normalise with")
    return PreprocessingSpec.from_dict(card.preprocessing)


def _input_size(card: ModelCard) -> tuple[int, ...]:
    if card.preprocessing:
        spec = _spec(card)
        return (spec.channels, *spec.size)
    return get_entry(card.arch).input_size


def _metadata(card: ModelCard) -> dict[str, Any]:
    return {
        "arch": card.arch,
        "kwargs": card.kwargs,
        "labels": card.labels,
        "preprocessing": card.preprocessing,
    }


def _test_images(data: str, spec: PreprocessingSpec, limit: int | None) -> Any:
    test = load_dataset(data, "test", limit=limit)
    return test, normalize(test.images, spec)


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# -- export ---------------------------------------------------------------------------------


def export_run_dir(
    run_dir: Path, output: Path, *, opset: int, data: str | None, parity_images: int
) -> dict[str, Any]:
    """Export a run directory; check parity on real test images unless ``data`` is None."""
    model, card = load_model(run_dir)
    export_onnx(model, output, input_size=_input_size(card), opset=opset, metadata=_metadata(card))
    result: dict[str, Any] = {"output": str(output), "opset": opset, "parity": None}
    if data is not None:
        _, images = _test_images(data, _spec(card), parity_images)
        report = check_parity(model, output, images)
        result["parity"] = {**report.__dict__, "summary": report.summary()}
    return result


def run_export(args: argparse.Namespace) -> int:
    """``resnetkit export REF -o model.onnx``."""
    if str(args.ref).lower().endswith(".onnx"):
        raise ConfigError(f"{args.ref} is already ONNX; export takes a run directory or name@alias")
    with resolve_ref(args.ref, args.registry) as run_dir:
        result = export_run_dir(
            run_dir,
            args.output,
            opset=args.opset,
            data=None if args.no_parity else args.data,
            parity_images=args.parity_images,
        )
    parity = result["parity"]["summary"] if result["parity"] else "parity check skipped"
    _print(args, result, f"wrote {args.output}\n{parity}")
    return 0


# -- quantize -------------------------------------------------------------------------------


def _calibration(data: str, spec: PreprocessingSpec, n: int, seed: int) -> torch.Tensor:
    if n < 1:
        raise ConfigError(f"--calib must be at least 1, got {n}")
    train = load_dataset(data, "train")
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train), generator=gen)[: min(n, len(train))]
    return normalize(train.images[index], spec)


def run_quantize(args: argparse.Namespace) -> int:
    """``resnetkit quantize REF -o model-int8.onnx --calib N``."""
    with resolve_ref(args.ref, args.registry) as src, tempfile.TemporaryDirectory() as tmp:
        if src.suffix.lower() == ".onnx":
            fp32, spec = src, PreprocessingSpec.from_dict(read_onnx_metadata(src)["preprocessing"])
        else:
            fp32 = Path(tmp) / "fp32.onnx"
            export_run_dir(src, fp32, opset=DEFAULT_OPSET, data=args.data, parity_images=256)
            spec = _spec(load_model(src)[1])
        test, _ = _test_images(args.data, spec, args.test_limit)
        calib = _calibration(args.data, spec, args.calib, args.seed)
        report = quantize_with_budget(
            fp32, args.output, calib, test.images, test.labels, spec,
            method=args.method, budget_points=args.budget,
        )  # fmt: skip
    verdict = "accepted" if report.accepted else "REJECTED (marked accepted=false in metadata)"
    text = (
        f"wrote {args.output} ({report.method} calibration on {report.calibration_images} "
        f"images, u8 activations, s8 per-channel weights)\n"
        f"top-1 on {report.test_images} test images: fp32 {report.fp32_top1:.2%} -> int8 "
        f"{report.int8_top1:.2%} (drop {report.drop_points:+.2f} points, budget "
        f"{report.budget_points:g}): {verdict}\n"
        f"size {report.fp32_size_bytes / 1e6:.2f} MB -> {report.int8_size_bytes / 1e6:.2f} MB"
    )
    _print(args, report.to_dict(), text)
    return 0 if report.accepted else 1


# -- bench ----------------------------------------------------------------------------------

BACKENDS = ("torch-eager", "torch-folded-cl", "torch-bf16", "onnx-fp32", "onnx-int8")


def build_backend_factories(
    run_dir: Path, names: list[str], workdir: Path, *, threads: int | None, data: str
) -> dict[str, Callable[[], InferenceBackend]]:
    """A loader per backend; ONNX files (fp32, int8) are made in ``workdir`` first."""
    model, card = load_model(run_dir)
    factories: dict[str, Callable[[], InferenceBackend]] = {
        "torch-eager": lambda: TorchBackend(load_model(run_dir)[0], threads=threads),
        "torch-folded-cl": lambda: TorchBackend(
            fold_batchnorm(load_model(run_dir)[0], channels_last=True),
            name="torch-folded-cl", channels_last=True, threads=threads,
        ),
        "torch-bf16": lambda: TorchBackend(
            fold_batchnorm(load_model(run_dir)[0], channels_last=True),
            name="torch-bf16", channels_last=True, autocast_dtype=torch.bfloat16,
            threads=threads,
        ),
    }  # fmt: skip
    fp32, int8 = workdir / "fp32.onnx", workdir / "int8.onnx"
    if {"onnx-fp32", "onnx-int8"} & set(names):
        export_onnx(model, fp32, input_size=_input_size(card), metadata=_metadata(card))
        factories["onnx-fp32"] = lambda: OnnxBackend(fp32, name="onnx-fp32", threads=threads)
    if "onnx-int8" in names:
        quantize_onnx(fp32, int8, _calibration(data, _spec(card), 64, seed=0))
        factories["onnx-int8"] = lambda: OnnxBackend(int8, name="onnx-int8", threads=threads)
    return {n: factories[n] for n in names}


def _parse_list(text: str, known: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if known is not None and t not in known]
    if unknown or not items:
        raise ConfigError(f"unknown or empty list {text!r}; choose from {', '.join(known or ())}")
    return items


def run_bench(args: argparse.Namespace) -> int:
    """``resnetkit bench REF``: a table of latency and throughput per backend and batch."""
    try:
        batch_sizes = tuple(int(b) for b in _parse_list(args.batch_sizes))
    except ValueError as exc:
        raise ConfigError(f"--batch-sizes must be integers, got {args.batch_sizes!r}") from exc
    with resolve_ref(args.ref, args.registry) as src, tempfile.TemporaryDirectory() as tmp:
        if src.suffix.lower() == ".onnx":
            meta = read_onnx_metadata(src)
            spec = PreprocessingSpec.from_dict(meta["preprocessing"])
            name = "onnx-int8" if "quantization" in meta else "onnx-fp32"
            factories: dict[str, Callable[[], InferenceBackend]] = {
                name: lambda: OnnxBackend(src, name=name, threads=args.threads)
            }
        else:
            names = _parse_list(args.backends, BACKENDS)
            factories = build_backend_factories(
                src, names, Path(tmp), threads=args.threads, data=args.data
            )
            spec = _spec(load_model(src)[1])
        size = (spec.channels, *spec.size)
        results = [
            benchmark_backend(f, size, batch_sizes, min_time_s=args.min_time)
            for f in factories.values()
        ]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        Console().print(bench_table(results))
    return 0


def bench_table(results: list[BackendBenchmark]) -> Table:
    """Rows per backend and batch size; speed-up relative to the first backend."""
    table = Table(title="inference latency (ms) and throughput (images/s)")
    for col in ("backend", "batch", "p50", "p95", "p99", "img/s", "x base", "load s", "MB"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    base = {s.batch_size: s.throughput for s in results[0].latencies} if results else {}
    for r in results:
        for s in r.latencies:
            ratio = s.throughput / base[s.batch_size] if base.get(s.batch_size) else 0.0
            table.add_row(
                r.name, str(s.batch_size), f"{s.p50_ms:.2f}", f"{s.p95_ms:.2f}",
                f"{s.p99_ms:.2f}", f"{s.throughput:.1f}", f"{ratio:.2f}",
                f"{r.load_time_s:.2f}", f"{r.size_bytes / 1e6:.2f}",
            )  # fmt: skip
    return table
