"""Soak: steady traffic for minutes, looking for what only time shows (a leak, a drift).

A real ``resnetkit serve`` process serves a registry model (SQLite registry, two small
resnet8 versions trained here on Fashion-MNIST, each with its drift reference, so live
drift monitoring runs) while a canary rollout of the second version progresses through its
steps. The load is open-loop: after measuring the sustainable rate (closed loop, 8 clients,
``--probe-s``), requests are sent at ``--load`` (70%) of it on a fixed schedule, real
Fashion-MNIST test PNGs. Every ``--sample-s`` the server's RSS, open file descriptors and
the p95 of the requests sent in that window are recorded.

Goals (reported "met"/"MISSED", never asserted), measured after ``--warmup-s``:
RSS growth <= 5%, open fds other than sockets flat (max - min <= 2; the sockets follow
the clients' connections and are reported beside them), p95 of the last minute within 10% of the
first minute's, zero 5xx. Writes ``soak.json`` and ``soak.png`` (RSS, fds and p95 over time).

    .venv/bin/python bench/soak.py --out runs/soak                    # 10 minutes
    .venv/bin/python bench/soak.py --out runs/soak --duration-s 180   # a shorter run
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from machine import machine  # noqa: E402  (bench/ is not a package)

TOKEN = "soak-admin-token"
MODEL = "fmnist"
MAX_OUTSTANDING = 256  # an open-loop generator must not pile up requests without bound


def train_versions(work: Path) -> list[Path]:
    """Two small resnet8 runs (seeds 0 and 1) with their drift references."""
    from resnetkit.config import (
        AugmentConfig,
        DataConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )
    from resnetkit.train import train

    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(
            model=ModelConfig("resnet8", {"width": 0.5}),
            data=DataConfig(name="fashion-mnist", limit=3000, val_fraction=0.1),
            augment=AugmentConfig(crop_padding=2, hflip=True),
            optim=OptimConfig(lr=0.1, warmup_epochs=0.5),
            epochs=2, batch_size=128, seed=seed, num_threads=1, progress=False,
        )  # fmt: skip
        run = work / f"run{seed}"
        if not (run / "model.safetensors").is_file():
            train(cfg, run)
        runs.append(run)
    return runs


def register(work: Path, runs: list[Path]) -> str:
    from resnetkit.registry import open_registry

    url = f"sqlite:///{work / 'registry.db'}"
    if (work / "registry.db").exists():
        (work / "registry.db").unlink()
    with open_registry(url, work / "artifacts") as store:
        for run in runs:
            store.register(run, MODEL)
        store.set_alias(MODEL, "production", 1, reason="soak")
    return url


def images(n: int = 200) -> list[bytes]:
    from PIL import Image

    from resnetkit.data import load_dataset

    test = load_dataset("fashion-mnist", "test", limit=n)
    out = []
    for pixels in test.images[:, 0].numpy():
        buf = io.BytesIO()
        Image.fromarray((pixels * 255).clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def start_server(work: Path, url: str, port: int) -> subprocess.Popen[bytes]:
    (work / "token").write_text(TOKEN)
    cmd = [
        sys.executable, "-m", "resnetkit.cli.main", "serve", f"{MODEL}@production",
        "--registry", url, "--port", str(port), "--admin-token-file", str(work / "token"),
        "--threads", "1", "--rollout-poll-s", "1",
    ]  # fmt: skip
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {work / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> tuple[int, int]:
    """(file descriptors that are not sockets, sockets) of ``pid``: the sockets follow the
    clients' connections; everything else (files, pipes, event fds) must stay flat."""
    files = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:"):
            sockets += 1
        else:
            files += 1
    return files, sockets


@dataclasses.dataclass
class Load:
    """Every request's send time, latency and status."""

    sent: list[float] = dataclasses.field(default_factory=list)
    latency_s: list[float] = dataclasses.field(default_factory=list)
    status: list[int] = dataclasses.field(default_factory=list)

    def window_p95_ms(self, start: float, end: float) -> float | None:
        chosen = [lat for t, lat in zip(self.sent, self.latency_s, strict=True) if start <= t < end]
        return float(np.percentile(chosen, 95) * 1000) if chosen else None


async def _one(client: httpx.AsyncClient, body: bytes, load: Load) -> None:
    sent = time.monotonic()
    try:
        answer = await client.post(
            f"/v1/models/{MODEL}/predict", content=body, headers={"content-type": "image/png"}
        )
        status = answer.status_code
    except httpx.HTTPError:
        status = 599  # no answer at all: counted with the 5xx
    load.sent.append(sent)
    load.latency_s.append(time.monotonic() - sent)
    load.status.append(status)


async def probe_rate(base: str, bodies: list[bytes], seconds: float) -> float:
    """Sustainable requests per second: 8 clients back to back for ``seconds``."""
    load = Load()
    deadline = time.monotonic() + seconds

    async def client_loop(i: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            n = i
            while time.monotonic() < deadline:
                await _one(client, bodies[n % len(bodies)], load)
                n += 8

    await asyncio.gather(*(client_loop(i) for i in range(8)))
    return sum(1 for s in load.status if s == 200) / seconds


async def open_loop(
    base: str, bodies: list[bytes], rate: float, seconds: float, sample: Any
) -> Load:
    """Send at ``rate`` per second for ``seconds``; ``sample(load)`` every few seconds."""
    load = Load()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        sampler = asyncio.create_task(sample(load))
        i = 0
        while (now := time.monotonic()) < start + seconds:
            due = start + i / rate
            if due > now:
                await asyncio.sleep(due - now)
            if len(tasks) < MAX_OUTSTANDING:
                task = asyncio.create_task(_one(client, bodies[i % len(bodies)], load))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        sampler.cancel()
    return load


def goals(samples: list[dict[str, Any]], load: Load, t0: float, args: Any) -> dict[str, Any]:
    after = [s for s in samples if s["t_s"] >= args.warmup_s]
    rss0, rss1 = after[0]["rss_mb"], after[-1]["rss_mb"]
    fds = [s["fds"] for s in after]
    sockets = [s["sockets"] for s in after]
    end = t0 + args.duration_s
    first = load.window_p95_ms(t0 + args.warmup_s, t0 + args.warmup_s + 60)
    last = load.window_p95_ms(end - 60, end)
    five_xx = sum(1 for s in load.status if s >= 500)
    drift = (last / first - 1) if first and last else None
    return {
        "rss_growth": rss1 / rss0 - 1,
        "rss_ok": rss1 / rss0 - 1 <= 0.05,
        "fds_min_max": [min(fds), max(fds)],
        "fds_ok": max(fds) - min(fds) <= 2,
        "sockets_min_max": [min(sockets), max(sockets)],
        "p95_first_minute_ms": first,
        "p95_last_minute_ms": last,
        "p95_change": drift,
        "p95_ok": drift is not None and drift <= 0.10,
        "five_xx": five_xx,
        "five_xx_ok": five_xx == 0,
        "requests": len(load.status),
        "statuses": {str(k): load.status.count(k) for k in sorted(set(load.status))},
    }


def plot(samples: list[dict[str, Any]], path: Path, warmup_s: float) -> None:
    from resnetkit.fileio import new_figure, save_figure

    fig = new_figure(8, 7)
    axes = fig.subplots(3, 1, sharex=True)
    t = [s["t_s"] for s in samples]
    for ax, key, label in zip(
        axes, ("rss_mb", "fds", "p95_ms"), ("RSS (MB)", "open fds", "p95 (ms)"), strict=True
    ):
        ax.plot(t, [s[key] if s[key] is not None else np.nan for s in samples])
        ax.axvline(warmup_s, color="grey", linestyle=":", label="end of warm-up")
        ax.set_ylabel(label)
    axes[0].legend(loc="lower right")
    axes[-1].set_xlabel("seconds")
    fig.suptitle("resnetkit serve soak: canary rollout and live drift on")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--probe-s", type=float, default=20.0)
    parser.add_argument("--load", type=float, default=0.7, help="share of the sustainable rate")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if args.duration_s < args.warmup_s + 120:
        raise SystemExit("--duration-s must leave at least two minutes after --warmup-s")
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(json.dumps(info), flush=True)
    runs = train_versions(args.out)
    url = register(args.out, runs)
    bodies = images()
    proc = start_server(args.out, url, args.port)
    base = f"http://127.0.0.1:{args.port}"
    try:
        sustainable = asyncio.run(probe_rate(base, bodies, args.probe_s))
        rate = args.load * sustainable
        print(f"sustainable {sustainable:.1f} req/s; soaking at {rate:.1f} req/s", flush=True)
        steps = {"steps": [5, 25, 50], "interval_s": args.duration_s / 4, "min_requests": 20}
        rollout = httpx.post(
            f"{base}/v1/admin/rollouts", headers={"authorization": f"Bearer {TOKEN}"},
            json={"model": MODEL, "canary": 2, "progress_deadline_s": 10 * args.duration_s,
                  "alias": "production", **steps},
            timeout=30,
        )  # fmt: skip
        print(f"rollout: {rollout.status_code} {rollout.text[:200]}", flush=True)
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()

        async def sample(load: Load) -> None:
            while True:
                await asyncio.sleep(args.sample_s)
                now = time.monotonic()
                fds, sockets = open_fds(proc.pid)
                row = {
                    "t_s": round(now - t0, 1), "rss_mb": rss_mb(proc.pid),
                    "fds": fds, "sockets": sockets,
                    "p95_ms": load.window_p95_ms(now - args.sample_s, now),
                    "sent": len(load.status),
                }  # fmt: skip
                samples.append(row)
                print(json.dumps(row), flush=True)

        load = asyncio.run(open_loop(base, bodies, rate, args.duration_s, sample))
        final = httpx.get(f"{base}/v1/rollouts/{MODEL}", timeout=30).json()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result = goals(samples, load, t0, args)
    result |= {
        "sustainable_rps": sustainable, "rate_rps": rate, "machine": info,
        "rollout_state": final.get("state"), "rollout_step": final.get("step"),
        "rollout_reason": final.get("reason"),
        "duration_s": args.duration_s, "warmup_s": args.warmup_s, "samples": samples,
    }  # fmt: skip
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    plot(samples, args.out / "soak.png", args.warmup_s)
    for key in ("rss_ok", "fds_ok", "p95_ok", "five_xx_ok"):
        print(f"{key[:-3]:>8}: {'met' if result[key] else 'MISSED'}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "machine")}))


if __name__ == "__main__":
    main()
