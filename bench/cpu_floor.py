"""The in-process CPU floor of one request: decode + preprocess + inference, nothing else.

What any server must spend on one image, measured in this process with the server's own
functions and settings (``serve/validation.py``'s decode and preprocessing, ONNX Runtime with
the same intra-op threads, no spinning, batch 1): ``serve_bench.py`` prints the server's
CPU-seconds per request beside it, so what the server adds (HTTP, the event loop, batching,
metrics, logs) is visible as a ratio. CPU time is the whole process's (``time.process_time``
counts every thread, ONNX Runtime's included).

    .venv/bin/python bench/cpu_floor.py MODEL.onnx IMAGE.jpg [IMAGE.jpg ...] --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["floor_cpu_s"]


def floor_cpu_s(
    onnx: Path, bodies: Sequence[bytes], content_type: str, threads: int, rounds: int = 5
) -> dict[str, Any]:
    """CPU-seconds per request of decode + preprocess + one batch-1 forward pass.

    Every body is run ``rounds`` times after one warm-up pass; the median round is reported,
    with its wall time (one request at a time, so wall >= CPU / threads).
    """
    from resnetkit.export.loading import load_model_ref
    from resnetkit.export.runtime import OnnxBackend
    from resnetkit.serve.validation import decode_image, image_to_model_input

    loaded = load_model_ref(onnx)
    spec = loaded.spec
    backend = OnnxBackend(onnx, threads=threads, spinning=False)

    def one(body: bytes) -> None:
        x = image_to_model_input(decode_image(body, content_type), spec)
        backend.run(x[None])

    for body in bodies:  # warm-up: ONNX Runtime's first runs allocate
        one(body)
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for body in bodies:
            one(body)
        cpu.append((time.process_time() - c0) / len(bodies))
        wall.append((time.perf_counter() - w0) / len(bodies))
    return {
        "cpu_s_per_request": statistics.median(cpu),
        "wall_s_per_request": statistics.median(wall),
        "threads": threads,
        "requests_per_round": len(bodies),
        "rounds": rounds,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--content-type", default="image/jpeg")
    args = p.parse_args(argv)
    from machine import describe, machine

    from resnetkit.errors import ResNetKitError

    print(describe(machine("as the ONNX file stores it (ONNX Runtime)")), flush=True)

    try:
        bodies = [path.read_bytes() for path in args.images]
        floor = floor_cpu_s(args.onnx, bodies, args.content_type, args.threads)
    except (OSError, ResNetKitError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"floor: {1000 * floor['cpu_s_per_request']:.2f} ms CPU, "
        f"{1000 * floor['wall_s_per_request']:.2f} ms wall per request ({args.threads} threads)"
    )


if __name__ == "__main__":
    main()
