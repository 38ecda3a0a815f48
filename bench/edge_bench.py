"""The on-device budget: every edge format and precision beside ONNX Runtime and eager torch.

For one trained model (``--run RUN_DIR``, or the Fashion-MNIST quickstart recipe
``configs/fashion_mnist_fast.toml`` trained here into ``--out``), it writes

    executorch fp32, executorch int8      resnetkit export --format executorch [--int8]
    tflite fp32, tflite int8              resnetkit export --format tflite [--int8]
    coreml fp32                           conversion only (size; Core ML runs on macOS)
    onnx fp32, onnx int8                  resnetkit export / quantize (the baseline)
    torch eager fp32                      the model as trained

and measures each in a fresh process (so one runtime's memory does not count against
another's): file size, peak RSS of the process (Python and the runtime included: compare
rows, not absolute numbers with a device's), latency at 1 thread and batch 1 (median and
p95 over ``--runs`` calls after a warm-up) and top-1 on ``--images`` real test images. The
int8 files use the calibration set ``resnetkit quantize`` uses (512 training images, seed 0).

    .venv/bin/python bench/edge_bench.py --out runs/edge-bench
    .venv/bin/python bench/edge_bench.py --run runs/quickstart --out runs/edge-bench --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine

ROWS = (
    ("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("executorch", "fp32"),
    ("executorch", "int8"), ("tflite", "fp32"), ("tflite", "int8"), ("coreml", "fp32"),
)  # fmt: skip
SUFFIX = {"executorch": ".pte", "tflite": ".tflite", "coreml": ".mlpackage", "onnx": ".onnx"}
EDGE_PACKAGES = ("executorch", "ai-edge-litert", "litert-torch", "coremltools")
RECIPE = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist_fast.toml"


def _edge_versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in EDGE_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _peak_rss_bytes() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _runner(fmt: str, path: Path, run: Path) -> Any:
    """``run(images)`` -> logits at batch 1, for one row, with one thread."""
    if fmt in ("executorch", "tflite"):
        from resnetkit.export.edge import edge_runner

        return edge_runner(path, threads=1).run
    if fmt == "onnx":
        from resnetkit.onnxio import INPUT_NAME, OUTPUT_NAME, ort_session

        session = ort_session(path, threads=1)
        return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    import torch

    from resnetkit.export import load_model_ref

    torch.set_num_threads(1)
    model = load_model_ref(str(run)).module()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out

    return eager


def measure(fmt: str, path: Path, run: Path, images: int, runs: int) -> dict[str, Any]:
    """One row, in this process: latency, accuracy and the process's peak RSS."""
    from resnetkit.export import load_model_ref

    loaded = load_model_ref(str(run))
    test = loaded.dataset("test", limit=images)
    x = loaded.normalized(test.images).float().numpy()
    started = time.perf_counter()
    forward = _runner(fmt, path, run)
    load_s = time.perf_counter() - started
    for i in range(min(20, len(x))):  # warm-up: first calls allocate and pack weights
        forward(x[i : i + 1])
    times = []
    for i in range(runs):
        one = x[i % len(x) : i % len(x) + 1]
        t0 = time.perf_counter()
        forward(one)
        times.append((time.perf_counter() - t0) * 1000)
    logits = np.concatenate([forward(x[i : i + 1]) for i in range(len(x))])
    top1 = float((logits.argmax(1) == test.labels.numpy()).mean())
    return {
        "load_s": load_s,
        "median_ms": float(np.median(times)),
        "p95_ms": float(np.percentile(times, 95)),
        "top1": top1,
        "images": len(x),
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def prepare(run: Path, out: Path) -> dict[tuple[str, str], Path]:
    """Write every file once (reused when already there); the torch row is the run itself."""
    from resnetkit.compress import quantize_onnx
    from resnetkit.export import load_model_ref
    from resnetkit.export.edge import export_edge

    loaded = load_model_ref(str(run))
    files: dict[tuple[str, str], Path] = {("torch", "fp32"): run / "model.safetensors"}
    for fmt, precision in ROWS[1:]:
        path = out / f"model-{precision}{SUFFIX[fmt]}"
        files[(fmt, precision)] = path
        if path.exists():
            continue
        print(f"writing {path.name} ({fmt} {precision})", flush=True)
        if fmt == "onnx" and precision == "fp32":
            path.write_bytes(loaded.onnx_path().read_bytes())
        elif fmt == "onnx":
            calib = loaded.calibration_images(512, seed=0)
            quantize_onnx(loaded.onnx_path(), path, calib)
        else:
            export_edge(loaded, path, fmt=fmt, int8=precision == "int8")
    return files


def trained_run(out: Path) -> Path:
    """The quickstart recipe trained into ``out/run`` (reused when already trained)."""
    from resnetkit.config import TrainConfig, from_dict, load_toml
    from resnetkit.train import train

    run = out / "run"
    if not (run / "summary.json").is_file():
        print(f"training {RECIPE.name} into {run}", flush=True)
        train(from_dict(TrainConfig, load_toml(RECIPE)), run)
    return run


def _row_in_child(fmt: str, precision: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", fmt, str(path), "--run", str(args.run),
           "--images", str(args.images), "--runs", str(args.runs),
           "--out", str(args.out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    """The report: one line per format and precision, ratios against ONNX Runtime fp32."""
    base = next((r for r in rows if r["format"] == "onnx" and r["precision"] == "fp32"), None)
    lines = [f"{'format':<11}{'prec':<6}{'MB':>8}{'peak RSS MB':>13}{'p50 ms':>9}{'p95 ms':>9}"
             f"{'x onnx':>8}{'top-1':>9}"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"{r['format']:<11}{r['precision']:<6}  failed: {r['error']}")
            continue
        size = f"{r['size_bytes'] / 1e6:8.2f}"
        if "median_ms" not in r:
            lines.append(f"{r['format']:<11}{r['precision']:<6}{size}   {r['note']}")
            continue
        ratio = base["median_ms"] / r["median_ms"] if base and "median_ms" in base else 0.0
        rss = r["peak_rss_bytes"] / 1e6 if r["peak_rss_bytes"] else float("nan")
        lines.append(f"{r['format']:<11}{r['precision']:<6}{size}{rss:13.0f}"
                     f"{r['median_ms']:9.3f}{r['p95_ms']:9.3f}{ratio:8.2f}"
                     f"{r['top1']:9.2%}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the machine, then the table (or JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run (default: train the quickstart)")
    p.add_argument("--out", type=Path, required=True, help="folder for the model files")
    p.add_argument("--images", type=int, default=1000, help="test images for top-1")
    p.add_argument("--runs", type=int, default=500, help="timed batch-1 calls per row")
    p.add_argument("--json", action="store_true")
    p.add_argument("--measure", nargs=2, metavar=("FORMAT", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:  # the child: one row, printed as one JSON line
        fmt, path = args.measure
        print(json.dumps(measure(fmt, Path(path), args.run, args.images, args.runs)))
        return
    info = machine()
    info["edge_packages"] = _edge_versions()
    print(describe(info), flush=True)
    print("edge: " + ", ".join(f"{k} {v}" for k, v in info["edge_packages"].items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.run = args.run or trained_run(args.out)
    files = prepare(args.run, args.out)
    rows = []
    for fmt, precision in ROWS:
        path = files[(fmt, precision)]
        row: dict[str, Any] = {"format": fmt, "precision": precision, "size_bytes": _size(path)}
        if fmt == "coreml":
            row["note"] = "converted and structurally checked; runs only on macOS"
        else:
            row.update(_row_in_child(fmt, precision, path, args))
        rows.append(row)
        print(f"measured {fmt} {precision}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"machine": info, "rows": rows}, indent=2))
    else:
        print(f"batch 1, 1 thread, {args.runs} timed calls, top-1 on {args.images} test images")
        print(table(rows))


if __name__ == "__main__":
    main()
