"""Served latency with and without the per-request OOD score: the same model, the same run.

Issue #27's goal: "p50 latency with the OOD score within 3% of without, on the serve bench".
Two ``resnetkit serve`` processes (``--backend onnx``, the serve bench's defaults) of the same
Fashion-MNIST run folder, pinned to the same cores (``--cpus``, default the first two):

* **with**: a copy of the folder as trained (its ``ood_detector.npz``, or a detector the
  server fits on the drift reference's logits);
* **without**: a copy with ``ood_detector.npz`` removed and the drift reference rewritten
  without its ``logits`` (else the server fits a detector on them); its embeddings stay, so
  live drift costs both servers the same and the OOD score is the only difference.

The server's model info is checked first (``ood.available`` true and false), and every answer
of "with" carries ``ood`` and none of "without" does. Both servers stay up; the load
generator (the serve bench's closed loop, real PNG test images) alternates blocks between
them in the order with, without, without, with, ... so that a machine whose load changes
during the run weighs on both arms alike. Per concurrency level: p50 and p95 of each arm over
all its blocks, the ratio with / without, and a 95% bootstrap interval of the p50 ratio over
block pairs; the goal is "met" when every interval lies under 1.03, "MISSED" when one lies
above, else "inconclusive" (a shared machine's noise is wider than 3%). The machine
(``bench/machine.py``) is printed first; the load average before and after. Timings are never
asserted in tests.

    .venv/bin/python bench/ood_serve_bench.py --run runs/fmnist --out runs/ood-serve
    .venv/bin/python bench/ood_serve_bench.py --run runs/fmnist --out /tmp/o --quick

Without ``--run`` it trains one epoch of the quickstart recipe first (``resnetkit train``
fits the detector at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe, machine
from serve_bench import (
    ManagedServer,
    Workload,
    closed_loop,
    encode,
    free_port,
    percentiles_ms,
    serving,
    train_fashion,
)

from resnetkit.contract import DRIFT_REFERENCE, OOD_DETECTOR

GOAL_P50_RATIO = 1.03
ARMS = ("with", "without")


def folder_without_ood(run: Path, out: Path) -> Path:
    """A copy of ``run`` that no server can build an OOD detector for (drift kept)."""
    from safetensors.numpy import load_file, save_file

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints", "plots"))
    (out / OOD_DETECTOR).unlink(missing_ok=True)
    reference = out / DRIFT_REFERENCE
    if reference.is_file():
        tensors = load_file(str(reference))
        tensors.pop("logits", None)
        save_file(tensors, str(reference))
    return out


def server(folder: Path, arm: str, dirs: Path, threads: int) -> ManagedServer:
    """``resnetkit serve FOLDER --backend onnx`` with its defaults."""
    port = free_port()
    cmd = [sys.executable, "-m", "resnetkit.cli.main", "serve", str(folder), "--backend",
           "onnx", "--port", str(port), "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "RESNETKIT_CACHE": str(dirs / "cache")}
    url = f"http://127.0.0.1:{port}"
    log = dirs / "logs" / f"ood-{arm}.log"
    info = {"command": " ".join(cmd[1:])}
    return ManagedServer(arm, cmd, env, f"{url}/readyz", f"{url}/v1/predict", log, info=info)


def check_arm(srv: ManagedServer, work: Workload, arm: str) -> dict[str, Any]:
    """The server says whether it scores OOD, and its answers agree."""
    base = srv.ready_url.removesuffix("/readyz")
    with httpx.Client(timeout=30, trust_env=False) as client:
        models = client.get(f"{base}/v1/models").json()
        answer = client.post(srv.predict_url, content=work.bodies[0],
                             headers={"content-type": work.content_type}).json()  # fmt: skip
    ood = models["models"][0]["ood"]
    if ood["available"] != (arm == "with") or ("ood" in answer) != (arm == "with"):
        raise SystemExit(f"{arm}: the server's OOD state is not what the arm needs: {ood}")
    return {"ood": ood}


def p50_ratio_interval(blocks: dict[str, list[list[float]]], seed: int = 0) -> list[float]:
    """95 % bootstrap interval of p50(with) / p50(without), resampling block pairs (a block of
    each arm run back to back shares the machine's load of that moment)."""
    rng = np.random.default_rng(seed)
    count = len(blocks["with"])
    ratios = []
    for _ in range(1000):
        pick = rng.integers(0, count, count)
        p50 = {arm: np.median(np.concatenate([blocks[arm][i] for i in pick])) for arm in ARMS}
        ratios.append(p50["with"] / p50["without"])
    low, high = np.quantile(ratios, [0.025, 0.975])
    return [float(low), float(high)]


def measure(
    servers: dict[str, ManagedServer], work: Workload, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Alternating blocks per arm at one concurrency; percentiles per arm over all blocks."""
    samples: dict[str, list[Any]] = {arm: [] for arm in ARMS}
    blocks: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}
    for block in range(args.blocks):
        order = ARMS if block % 2 == 0 else ARMS[::-1]
        for arm in order:
            got, _ = asyncio.run(
                closed_loop(servers[arm].predict_url, work, concurrency, args.requests, 600, 30)
            )
            samples[arm] += got
            blocks[arm].append([1000 * s.latency_s for s in got if s.status == "200"])
    out: dict[str, Any] = {"concurrency": concurrency}
    for arm in ARMS:
        ok = [s for s in samples[arm] if s.status == "200"]
        out[arm] = {"requests": len(samples[arm]), "ok": len(ok), **percentiles_ms(ok)}
    for key in ("p50_ms", "p95_ms"):
        out[f"{key[:3]}_ratio"] = out["with"][key] / out["without"][key]
    out["p50_ratio_ci95"] = p50_ratio_interval(blocks)
    return out


def verdict(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """``met`` when every level's interval lies within the goal, ``MISSED`` when one lies
    wholly above it, else ``inconclusive``: the machine's noise is wider than the goal."""
    highs = [lv["p50_ratio_ci95"][1] for lv in levels]
    lows = [lv["p50_ratio_ci95"][0] for lv in levels]
    if max(highs) <= GOAL_P50_RATIO:
        text = "met"
    elif max(lows) > GOAL_P50_RATIO:
        text = "MISSED"
    else:
        text = "inconclusive (the 95% interval straddles the goal: measure on a quiet machine)"
    worst = max(lv["p50_ratio"] for lv in levels)
    return {"p50_ratio_max": worst, "goal": GOAL_P50_RATIO, "verdict": text}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained Fashion-MNIST run (default: train one)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="levels 1,8; 8 blocks of 30 requests")
    p.add_argument("--levels", help="concurrency levels (default 1,8,32)")
    p.add_argument("--blocks", type=int, help="blocks per arm and level (default 16)")
    p.add_argument("--requests", type=int, help="requests per block (default 60)")
    p.add_argument("--cpus", help="cores for both servers and the load generator (default: 2)")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in (args.levels or ("1,8" if args.quick else "1,8,32")).split(",")]
    args.blocks = args.blocks or (8 if args.quick else 16)
    args.requests = args.requests or (30 if args.quick else 60)
    available = sorted(os.sched_getaffinity(0))
    args.cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else available[:2]
    if args.run is not None and not (args.run / "model.json").is_file():
        p.error(f"--run {args.run}: no model.json; pass a trained run directory")
    if min(args.levels) < 1 or args.blocks < 2 or args.requests < 1:
        p.error("--levels >= 1, --blocks >= 2 (both orders), --requests >= 1")
    return args


def main() -> None:
    args = parse_args()
    print(describe(machine()), flush=True)
    os.sched_setaffinity(0, args.cpus)  # inherited by both servers
    dirs = args.out / "work"
    (dirs / "logs").mkdir(parents=True, exist_ok=True)
    run = args.run or train_fashion(dirs, dirs / "logs" / "train.log")
    folders = {"with": dirs / "with", "without": folder_without_ood(run, dirs / "without")}
    shutil.rmtree(folders["with"], ignore_errors=True)
    shutil.copytree(run, folders["with"], ignore=shutil.ignore_patterns("checkpoints", "plots"))
    from resnetkit.data import load_dataset

    test = load_dataset("fashion-mnist", "test", limit=256).images.numpy()
    work = Workload("fashion", f"Fashion-MNIST {run}", run, run, run,
                    encode([a[0] for a in test], "PNG"), "image/png")  # fmt: skip
    report: dict[str, Any] = {"machine": machine(), "run": str(run), "cpus": args.cpus,
                              "load_average_before": os.getloadavg(), "levels": []}  # fmt: skip
    print(f"cores {args.cpus}, load average before {os.getloadavg()}", flush=True)
    threads = len(args.cpus)
    with_ood = server(folders["with"], "with", dirs, threads)
    without = server(folders["without"], "without", dirs, threads)
    with serving(with_ood, work), serving(without, work):
        servers = {"with": with_ood, "without": without}
        report["arms"] = {arm: check_arm(s, work, arm) for arm, s in servers.items()}
        for arm in ARMS:  # warm-up, untimed
            asyncio.run(closed_loop(servers[arm].predict_url, work, 8, 200, 10, 30))
        print(
            "| clients | p50 with | p50 without | ratio (95% CI) | p95 with | p95 without | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for level in args.levels:
            lv = measure(servers, work, level, args)
            report["levels"].append(lv)
            w, wo = lv["with"], lv["without"]
            low, high = lv["p50_ratio_ci95"]
            print(f"| {level} | {w['p50_ms']:.2f} ms | {wo['p50_ms']:.2f} ms | "
                  f"{lv['p50_ratio']:.3f} ({low:.3f}-{high:.3f}) | {w['p95_ms']:.2f} ms | "
                  f"{wo['p95_ms']:.2f} ms | {lv['p95_ratio']:.3f} |", flush=True)  # fmt: skip
    report["load_average_after"] = os.getloadavg()
    report["goal"] = verdict(report["levels"])
    print(f"goal: p50 with OOD within 3% of without at every level: {report['goal']['verdict']} "
          f"(worst ratio {report['goal']['p50_ratio_max']:.3f}); load average after "
          f"{os.getloadavg()}")  # fmt: skip
    (args.out / "ood_serve.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out / 'ood_serve.json'}")


if __name__ == "__main__":
    main()
