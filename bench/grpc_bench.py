"""KServe V2 over gRPC against V2 REST with binary tensors, on one resnetkit server.

The same server process answers both (``--grpc-port``), so the comparison is the protocol
alone: 8 raw 224x224 UINT8 images per request (the server preprocesses them), sent by the
standard clients, ``tritonclient.grpc`` and ``tritonclient.http`` (binary tensor extension),
from ``--concurrency`` threads for ``--seconds`` each, in ``--rounds`` blocks that alternate
which protocol goes first (so a drifting machine favours neither). Prints the machine first,
then throughput, latency, and the CPU milliseconds per request of the server process and of
the clients (this process) per protocol, and the throughput ratio with a 95% interval of the
mean of the rounds' ratios (each round: one block of each protocol, side by side in time).

    .venv/bin/python bench/grpc_bench.py --out runs/grpc-bench
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import serve_bench as sb  # noqa: E402  (a sibling script, not a package)
from machine import describe, machine  # noqa: E402

MODEL = "resnet18-int8"
BATCH = 8


def _images() -> np.ndarray:
    photos = sb.photo_arrays(224)
    return np.stack([photos[i % len(photos)] for i in range(BATCH)])  # (8, 224, 224, 3) uint8


def _load(
    send: Callable[[], None], threads: int, seconds: float, server_pid: int
) -> dict[str, Any]:
    """Run ``send`` in ``threads`` loops for ``seconds``: throughput, latency percentiles, and
    the CPU seconds per request of the server and of this (client) process."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                send()
            except Exception:  # counted, not raised: the bench reports errors
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    server_cpu, client_cpu = sb.tree_cpu_s(server_pid), time.process_time()
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    server_cpu = sb.tree_cpu_s(server_pid) - server_cpu
    client_cpu = time.process_time() - client_cpu
    ordered = sorted(latencies)
    done = max(1, len(latencies))
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "latencies_s": ordered,
        "server_cpu_ms_per_request": 1000 * server_cpu / done,
        "client_cpu_ms_per_request": 1000 * client_cpu / done,
        "requests_per_s": len(latencies) / elapsed,
        "images_per_s": len(latencies) * BATCH / elapsed,
        "p50_ms": 1000 * statistics.median(ordered) if ordered else None,
        "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))] if ordered else None,
        "errors": errors[0],
    }


def _round_ratios(blocks: dict[str, list[dict[str, Any]]]) -> list[float]:
    """gRPC's throughput over REST's in each round (two blocks side by side in time)."""
    return [
        (g["requests"] / g["seconds"]) / (r["requests"] / r["seconds"])
        for r, g in zip(blocks["rest"], blocks["grpc"], strict=True)
        if r["requests"]
    ]


def _interval(ratios: list[float]) -> tuple[float, float]:
    """A 95% interval of the mean round ratio (Student's t; the rounds are the samples)."""
    if len(ratios) < 2:
        return (math.nan, math.nan)
    from scipy import stats

    mean, sem = statistics.fmean(ratios), statistics.stdev(ratios) / math.sqrt(len(ratios))
    half = float(stats.t.ppf(0.975, len(ratios) - 1)) * sem
    return mean - half, mean + half


def _combine(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Blocks of one protocol as one measurement: totals, and the worst block's p95."""
    requests = sum(b["requests"] for b in blocks)
    latencies = sorted(x for b in blocks for x in b.pop("latencies_s"))
    seconds = sum(b["seconds"] for b in blocks)
    per_request = {
        key: sum(b[key] * b["requests"] for b in blocks) / max(1, requests)
        for key in ("server_cpu_ms_per_request", "client_cpu_ms_per_request")
    }
    return {
        "requests": requests,
        "requests_per_s": requests / seconds,
        "images_per_s": requests * BATCH / seconds,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
        "errors": sum(b["errors"] for b in blocks),
        **per_request,
    }


def main() -> None:
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=20.0, help="per protocol and concurrency")
    p.add_argument("--concurrency", default="1,4", help="client threads, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="the server's inference threads")
    p.add_argument("--rounds", type=int, default=4, help="alternating blocks per cell")
    args = p.parse_args()
    try:
        levels = [int(x) for x in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency takes client counts like 1,4,8, got {args.concurrency!r}")
    if min(levels) < 1 or args.rounds < 1 or args.seconds <= 0:
        p.error("--concurrency counts and --rounds must be at least 1, --seconds above 0")
    info = machine()
    print(describe(info), flush=True)
    dirs = args.out / "work"
    (dirs / "logs").mkdir(parents=True, exist_ok=True)
    work = sb.build_resnet18(dirs, seed=0, calib_images=8)
    http_port, grpc_port = sb.free_port(), sb.free_port()
    cmd = [
        *(sys.executable, "-m", "resnetkit.cli.main", "serve", str(work.int8)),
        *("--port", str(http_port), "--grpc-port", str(grpc_port), "--threads", str(args.threads)),
    ]
    server = sb.ManagedServer(
        "onnx-int8", cmd, {**sb.os.environ, "RESNETKIT_CACHE": str(dirs / "cache")},
        f"http://127.0.0.1:{http_port}/readyz", f"http://127.0.0.1:{http_port}/v1/predict",
        dirs / "logs" / "server.log",
    )  # fmt: skip
    images = _images()
    name = work.int8.stem
    report: dict[str, Any] = {"machine": info, "batch": BATCH, "model": str(work.int8), "runs": []}
    with sb.serving(server, work):
        g = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        h = thttp.InferenceServerClient(f"127.0.0.1:{http_port}", concurrency=8)

        def via_grpc() -> None:
            x = tgrpc.InferInput("input", list(images.shape), "UINT8")
            x.set_data_from_numpy(images)
            g.infer(name, [x], outputs=[tgrpc.InferRequestedOutput("probabilities")])

        def via_rest() -> None:
            x = thttp.InferInput("input", list(images.shape), "UINT8")
            x.set_data_from_numpy(images, binary_data=True)
            out = thttp.InferRequestedOutput("probabilities", binary_data=True)
            h.infer(name, [x], outputs=[out])

        via_grpc(), via_rest()  # warm both paths
        print(f"\n{BATCH} x 224x224 UINT8 per request, {args.seconds:g} s per protocol and "
              f"client count in {args.rounds} alternating blocks, server --threads "
              f"{args.threads}, clients on the same cores")  # fmt: skip
        print(
            "| clients | REST binary req/s | gRPC req/s | gRPC / REST (95% CI) | REST p95 ms "
            "| gRPC p95 ms "
            "| server CPU ms/req REST, gRPC | client CPU ms/req REST, gRPC |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for c in levels:
            blocks: dict[str, list[dict[str, Any]]] = {"rest": [], "grpc": []}
            for r in range(args.rounds):  # REST first, then gRPC first, ...: drift cancels
                order = ("rest", "grpc") if r % 2 == 0 else ("grpc", "rest")
                for key in order:
                    send = via_rest if key == "rest" else via_grpc
                    blocks[key].append(_load(send, c, args.seconds / args.rounds, server.pid))
            rounds = _round_ratios(blocks)
            rest, grpc_ = _combine(blocks["rest"]), _combine(blocks["grpc"])
            ratio = grpc_["requests_per_s"] / rest["requests_per_s"]
            low, high = _interval(rounds)
            report["runs"].append({"clients": c, "rest": rest, "grpc": grpc_, "ratio": ratio,
                                   "round_ratios": rounds, "ratio_ci95": [low, high],
                                   "blocks": blocks})  # fmt: skip
            print(
                f"| {c} | {rest['requests_per_s']:.2f} | {grpc_['requests_per_s']:.2f} | "
                f"{ratio:.2f}x ({low:.2f}-{high:.2f}) | {rest['p95_ms']:.0f} ms | "
                f"{grpc_['p95_ms']:.0f} ms | "
                f"{rest['server_cpu_ms_per_request']:.1f}, "
                f"{grpc_['server_cpu_ms_per_request']:.1f} | "
                f"{rest['client_cpu_ms_per_request']:.1f}, "
                f"{grpc_['client_cpu_ms_per_request']:.1f} |",
                flush=True,
            )
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
