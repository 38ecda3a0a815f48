"""KServe V2 over gRPC against V2 REST with binary tensors, on one resnetkit server.

The same server process answers both (``--grpc-port``), so the comparison is the protocol
alone: 8 raw 224x224 UINT8 images per request (the server preprocesses them), sent by the
standard clients, ``tritonclient.grpc`` and ``tritonclient.http`` (binary tensor extension),
from ``--concurrency`` threads for ``--seconds`` each, in ``--rounds`` blocks that alternate
which protocol goes first (so a drifting machine favours neither). Prints the machine first,
then throughput, latency, and the CPU milliseconds per request of the server process and of
the clients (this process) per protocol, and the throughput ratio with a 95% interval of the
mean of the rounds' ratios (each round: one block of each protocol, side by side in time).

Two models (``--models``), each int8 with seeded random weights: resnet18 at 224x224, where
the forward pass is about 90 ms of CPU per request and hides the protocols, and the CIFAR
resnet8 at 32x32 (the server resizes the 224x224 images), where inference is about 1 ms and
what is left is the protocol: parsing, copying and encoding the 1.2 MB request and its answer.

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

BATCH = 8
MODELS = {"resnet18": (224, 1000), "resnet8": (32, 10)}  # input side, classes


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


def _senders(g: Any, h: Any, tgrpc: Any, thttp: Any, name: str, images: np.ndarray) -> dict:
    """One request of each protocol, as the standard clients send it."""

    def via_grpc() -> None:
        x = tgrpc.InferInput("input", list(images.shape), "UINT8")
        x.set_data_from_numpy(images)
        g.infer(name, [x], outputs=[tgrpc.InferRequestedOutput("probabilities")])

    def via_rest() -> None:
        x = thttp.InferInput("input", list(images.shape), "UINT8")
        x.set_data_from_numpy(images, binary_data=True)
        out = thttp.InferRequestedOutput("probabilities", binary_data=True)
        h.infer(name, [x], outputs=[out])

    return {"rest": via_rest, "grpc": via_grpc}


def _compare(
    senders: dict[str, Callable[[], None]], clients: int, args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    """Alternating blocks of both protocols at ``clients`` threads: REST first, then gRPC
    first, ... so that a drifting machine favours neither."""
    blocks: dict[str, list[dict[str, Any]]] = {"rest": [], "grpc": []}
    for r in range(args.rounds):
        for key in ("rest", "grpc") if r % 2 == 0 else ("grpc", "rest"):
            blocks[key].append(_load(senders[key], clients, args.seconds / args.rounds, pid))
    rounds = _round_ratios(blocks)
    rest, grpc_ = _combine(blocks["rest"]), _combine(blocks["grpc"])
    return {
        "clients": clients, "rest": rest, "grpc": grpc_,
        "ratio": grpc_["requests_per_s"] / rest["requests_per_s"],
        "round_ratios": rounds, "ratio_ci95": list(_interval(rounds)), "blocks": blocks,
    }  # fmt: skip


def main() -> None:
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=20.0, help="per protocol and concurrency")
    p.add_argument("--concurrency", default="1,4", help="client threads, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="the server's inference threads")
    p.add_argument("--rounds", type=int, default=4, help="alternating blocks per cell")
    p.add_argument("--models", default="resnet18,resnet8", help=f"of {', '.join(MODELS)}")
    args = p.parse_args()
    try:
        levels = [int(x) for x in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency takes client counts like 1,4,8, got {args.concurrency!r}")
    if min(levels) < 1 or args.rounds < 1 or args.seconds <= 0:
        p.error("--concurrency counts and --rounds must be at least 1, --seconds above 0")
    try:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        sizes = [MODELS[m] for m in models]
    except KeyError as e:
        p.error(f"--models takes {', '.join(MODELS)}, got {e.args[0]!r}")
    if not models:
        p.error(f"--models names at least one of {', '.join(MODELS)}")
    dirs = args.out / "work"
    try:
        (dirs / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"--out: cannot create {dirs / 'logs'}: {exc.strerror}")
    info = machine()
    print(describe(info), flush=True)
    images = _images()
    report: dict[str, Any] = {"machine": info, "batch": BATCH, "runs": []}
    for arch, (size, classes) in zip(models, sizes, strict=True):
        _, _, int8 = sb.build_random(dirs, arch, size, classes, seed=0, calib_images=8)
        http_port, grpc_port = sb.free_port(), sb.free_port()
        cmd = [
            *(sys.executable, "-m", "resnetkit.cli.main", "serve", str(int8)),
            *("--port", str(http_port), "--grpc-port", str(grpc_port)),
            *("--threads", str(args.threads)),
        ]
        server = sb.ManagedServer(
            f"onnx-int8-{arch}", cmd, {**sb.os.environ, "RESNETKIT_CACHE": str(dirs / "cache")},
            f"http://127.0.0.1:{http_port}/readyz", f"http://127.0.0.1:{http_port}/v1/predict",
            dirs / "logs" / f"server-{arch}.log",
        )  # fmt: skip
        probe = sb.encode(images[:1], "PNG")[0]
        try:
            server.start(probe, "image/png")
            g = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            h = thttp.InferenceServerClient(f"127.0.0.1:{http_port}", concurrency=8)
            senders = _senders(g, h, tgrpc, thttp, int8.stem, images)
            for send in senders.values():
                send()  # warm both paths
            print(f"\n{arch} int8 ({size}x{size} input): {BATCH} x 224x224 UINT8 per request, "
                  f"{args.seconds:g} s per protocol and client count in {args.rounds} "
                  f"alternating blocks, server --threads {args.threads}, clients on the same "
                  "cores")  # fmt: skip
            print(
                "| clients | REST binary req/s | gRPC req/s | gRPC / REST (95% CI) | REST p95 ms "
                "| gRPC p95 ms "
                "| server CPU ms/req REST, gRPC | client CPU ms/req REST, gRPC |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for c in levels:
                run = _compare(senders, c, args, server.pid)
                report["runs"].append({"model": arch, "file": str(int8), **run})
                rest, grpc_, (low, high) = run["rest"], run["grpc"], run["ratio_ci95"]
                print(
                    f"| {c} | {rest['requests_per_s']:.2f} | {grpc_['requests_per_s']:.2f} | "
                    f"{run['ratio']:.2f}x ({low:.2f}-{high:.2f}) | {rest['p95_ms']:.0f} ms | "
                    f"{grpc_['p95_ms']:.0f} ms | "
                    f"{rest['server_cpu_ms_per_request']:.1f}, "
                    f"{grpc_['server_cpu_ms_per_request']:.1f} | "
                    f"{rest['client_cpu_ms_per_request']:.1f}, "
                    f"{grpc_['client_cpu_ms_per_request']:.1f} |",
                    flush=True,
                )
        finally:
            server.stop()
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
