"""``resnetkit export|quantize|bench``: ONNX with parity, int8 with an accuracy budget, speed.

A ``REF`` is anything the loader takes (:mod:`resnetkit.export.loading`): a run directory,
an ``.onnx`` file, or a registry reference (``name@alias``, ``name:3``, ``name``). Real
images for parity, calibration and accuracy come from the data the model was trained on
(its ``config.toml``), or ``--data``. ``export --format executorch|tflite|coreml`` writes an
edge model instead of ONNX (:mod:`resnetkit.export.edge`, ``docs/edge.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from resnetkit.cli.common import add_registry_flag, check_at_least, print_json, status
from resnetkit.compress import CALIBRATION_METHODS, check_quantizable, quantize_with_budget
from resnetkit.errors import ConfigError
from resnetkit.export import (
    DEFAULT_OPSET,
    BackendBenchmark,
    LoadedModel,
    benchmark_backend,
    check_opset,
    check_parity,
    export_onnx,
    load_model_ref,
)
from resnetkit.fileio import check_output_file, staged
from resnetkit.onnxio import card_metadata

#: What ``bench`` measures, by the loader's backend kind.
BACKENDS = {
    "torch-eager": "torch",
    "torch-folded-cl": "torch-folded-cl",
    "torch-bf16": "torch-bf16",
    "onnx-fp32": "onnx",
    "onnx-int8": "onnx-int8",
}


def add_parser(subparsers: Any) -> None:
    """Register the ``export``, ``quantize`` and ``bench`` commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("ref", metavar="REF", help="run directory, .onnx file or name@alias")
    add_registry_flag(common)
    common.add_argument("--data", help="dataset for real images (default: the model's own)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    exp = subparsers.add_parser(
        "export", parents=[common], help="export a model to ONNX, ExecuTorch, LiteRT or Core ML"
    )
    exp.add_argument("-o", "--output", required=True, type=Path,
                     help="the .onnx, .pte, .tflite file or .mlpackage")  # fmt: skip
    exp.add_argument("--format", default="onnx", metavar="FORMAT",
                     help="onnx (default), executorch, tflite or coreml")  # fmt: skip
    exp.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    exp.add_argument("--no-parity", action="store_true", help="ONNX: skip the parity check")
    exp.add_argument(
        "--parity-images",
        type=int,
        default=None,
        help="real test images (ONNX 256, edge formats 1000 and at least 1000)",
    )
    exp.add_argument(
        "--int8", action="store_true", help="executorch, tflite: PT2E static int8 within --budget"
    )
    exp.add_argument("--calib", type=int, default=512, help="int8 calibration training images")
    exp.add_argument("--seed", type=int, default=0, help="picks the calibration images")
    exp.add_argument("--budget", type=float, default=1.0, help="int8: max top-1 drop, points")
    exp.add_argument(
        "--no-delegate",
        action="store_true",
        help="executorch: portable kernels only, no XNNPACK delegate",
    )
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


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        print_json(data)
    else:
        print(text)


# -- export ---------------------------------------------------------------------------------


def _weights_model(args: argparse.Namespace, verb: str) -> LoadedModel:
    if str(args.ref).lower().endswith(".onnx"):
        raise ConfigError(f"{args.ref} is already ONNX; {verb} takes a run directory or version")
    loaded = load_model_ref(args.ref, registry=args.registry)
    if not loaded.has_weights:
        raise ConfigError(f"{args.ref} is already ONNX; {verb} takes a run directory or version")
    return loaded


def run_export(args: argparse.Namespace) -> int:
    """``resnetkit export REF -o model.onnx``: export, then check parity on real images."""
    if args.format != "onnx":
        return run_edge_export(args)
    _refuse_edge_flags(args)
    if args.parity_images is None:
        args.parity_images = 256
    check_opset(args.opset)
    check_output_file(args.output, what="-o", suffix=".onnx")
    if not args.no_parity:
        check_at_least("--parity-images", args.parity_images, 1)
    loaded = _weights_model(args, "export")
    model = loaded.module()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    parity = None
    with staged(args.output) as stage:
        with status(f"exporting {loaded.identity.label} to ONNX (opset {args.opset})"):
            export_onnx(
                model, stage, input_size=loaded.input_size, opset=args.opset,
                metadata=card_metadata(loaded.card),
            )  # fmt: skip
        if not args.no_parity:
            test = loaded.dataset("test", data=args.data, limit=args.parity_images)
            with status(f"checking parity on {len(test)} real test images"):
                parity = check_parity(model, stage, loaded.normalized(test.images))
    result = {
        "output": str(args.output),
        "opset": args.opset,
        "parity": None if parity is None else {**parity.__dict__, "summary": parity.summary()},
    }
    line = parity.summary() if parity is not None else "parity check skipped"
    _say(args, result, f"wrote {args.output}\n{line}")
    return 0


def _refuse_edge_flags(args: argparse.Namespace) -> None:
    edge_only = {"--int8": args.int8, "--no-delegate": args.no_delegate}
    given = [flag for flag, on in edge_only.items() if on]
    if given:
        raise ConfigError(f"{', '.join(given)}: only for --format executorch|tflite|coreml; "
                          "for int8 ONNX use `resnetkit quantize`")  # fmt: skip


def run_edge_export(args: argparse.Namespace) -> int:
    """``resnetkit export REF --format executorch|tflite|coreml -o FILE [--int8]``."""
    from resnetkit.export.edge import MIN_PARITY_IMAGES, check_edge_output, edge_format, export_edge

    fmt = edge_format(args.format)
    check_edge_output(args.output, fmt)
    if args.no_parity:
        raise ConfigError("--no-parity: edge exports are always checked (a file that fails "
                          "is not written)")  # fmt: skip
    if args.opset != DEFAULT_OPSET:
        raise ConfigError(f"--opset is for ONNX, not --format {fmt.name}")
    if args.no_delegate and fmt.name != "executorch":
        raise ConfigError("--no-delegate is for --format executorch")
    check_at_least("--calib", args.calib, 1)
    loaded = _weights_model(args, "export")
    report = export_edge(
        loaded, args.output, fmt=fmt.name, int8=args.int8,
        parity_images=args.parity_images or MIN_PARITY_IMAGES, calibration_images=args.calib,
        seed=args.seed, budget_points=args.budget, data=args.data,
        delegate=not args.no_delegate, stage=lambda m: status(m, enabled=not args.json),
    )  # fmt: skip
    lines = [f"wrote {report.path} ({fmt.name} {report.precision}, "
             f"{report.size_bytes / 1e6:.2f} MB, {report.seconds:.1f} s)"]  # fmt: skip
    if report.parity is not None:
        lines.append(f"parity {report.parity.summary()}")
    if report.structure is not None:
        lines.append(
            f"structure: input {report.structure['input_shape']}, output "
            f"{report.structure['output_shape']}, {report.structure['operations']} ops; "
            "predictions not checked: Core ML runs only on macOS"
        )
    if report.details.get("delegated_subgraphs") is not None:
        portable = ", ".join(sorted(report.details["portable_ops"])) or "none"
        lines.append(f"XNNPACK subgraphs {report.details['delegated_subgraphs']}; portable "
                     f"ops: {portable}")  # fmt: skip
    _say(args, report.to_dict(), "\n".join(lines))
    return 0


# -- quantize -------------------------------------------------------------------------------


def run_quantize(args: argparse.Namespace) -> int:
    """``resnetkit quantize REF -o model-int8.onnx --calib N``."""
    check_output_file(args.output, what="-o", suffix=".onnx")
    check_at_least("--calib", args.calib, 1)
    check_at_least("--budget", args.budget, 0)
    check_at_least("--test-limit", args.test_limit, 1)
    loaded = load_model_ref(args.ref, registry=args.registry)
    if loaded.onnx_file is not None:
        check_quantizable(loaded.onnx_file)
    test = loaded.dataset("test", data=args.data, limit=args.test_limit)
    with status("exporting the float model to ONNX"):
        fp32 = loaded.onnx_path()
    if loaded.has_weights:
        with status("checking its parity"):
            check_parity(loaded.module(), fp32, loaded.normalized(test.images[:256]))
    calib = loaded.calibration_images(args.calib, seed=args.seed, data=args.data)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with (
        staged(args.output) as stage,
        status(f"calibrating on {len(calib)} images and measuring top-1 on {len(test)}"),
    ):
        report = quantize_with_budget(
            fp32, stage, calib, test.images, test.labels, loaded.spec,
            method=args.method, budget_points=args.budget,
        )  # fmt: skip
    data = {**report.to_dict(), "path": str(args.output)}
    verdict = "accepted" if report.accepted else "REJECTED (marked accepted=false in metadata)"
    text = (
        f"wrote {args.output} ({report.method} calibration on {report.calibration_images} "
        f"images, u8 activations, 7-bit s8 per-channel weights)\n"
        f"top-1 on {report.test_images} test images: fp32 {report.fp32_top1:.2%} -> int8 "
        f"{report.int8_top1:.2%} (drop {report.drop_points:+.2f} points, budget "
        f"{report.budget_points:g}): {verdict}\n"
        f"size {report.fp32_size_bytes / 1e6:.2f} MB -> {report.int8_size_bytes / 1e6:.2f} MB"
    )
    _say(args, data, text)
    return 0 if report.accepted else 1


# -- bench ----------------------------------------------------------------------------------


def _parse_list(flag: str, text: str, known: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if known is not None and t not in known]
    if unknown or not items:
        choices = f"; choose from {', '.join(known)}" if known else ""
        raise ConfigError(f"{flag}: unknown or empty list {text!r}{choices}")
    return items


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in _parse_list("--batch-sizes", text))
    except ValueError as exc:
        raise ConfigError(f"--batch-sizes must be integers, got {text!r}") from exc
    if min(sizes) < 1:
        raise ConfigError(f"--batch-sizes must all be at least 1, got {text!r}")
    return sizes


def run_bench(args: argparse.Namespace) -> int:
    """``resnetkit bench REF``: a table of latency and throughput per backend and batch."""
    batch_sizes = _batch_sizes(args.batch_sizes)
    check_at_least("--threads", args.threads, 1)
    check_at_least("--min-time", args.min_time, 0, strict=True)
    names = _parse_list("--backends", args.backends, tuple(BACKENDS))
    loaded = load_model_ref(args.ref, registry=args.registry)
    if not loaded.has_weights:  # an ONNX file runs as what it is
        names = ["onnx-int8" if loaded.is_int8 else "onnx-fp32"]
    if args.threads:
        torch.set_num_threads(args.threads)  # torch's one pool, set once for the process
    results = []
    for name in names:
        with status(f"benchmarking {name}", enabled=not args.json):
            factory = _factory(loaded, name, args.threads)
            results.append(
                benchmark_backend(factory, loaded.input_size, batch_sizes, min_time_s=args.min_time)
            )
    if args.json:
        print_json([r.to_dict() for r in results])
    else:
        Console().print(bench_table(results))
    return 0


def _factory(loaded: LoadedModel, name: str, threads: int | None) -> Any:
    kind = BACKENDS[name]
    if kind.startswith("onnx"):
        # Export or quantize before the clock starts: the load time is the session's.
        loaded.int8_path() if kind == "onnx-int8" else loaded.onnx_path()

    def build() -> Any:
        backend = loaded.backend(kind, threads=threads)
        backend.name = name
        return backend

    return build


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
