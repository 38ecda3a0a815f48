"""Soak: steady traffic for minutes, looking for what only time shows (a leak, a drift).

A real ``resnetkit serve`` process serves a registry model (SQLite registry, two small
resnet8 versions trained here on Fashion-MNIST, each with its drift reference, so live
drift monitoring runs) while a canary rollout of the second version progresses through its
steps (its checks relaxed so that it stays on for the whole soak: the two versions are
meant to differ). The rollout starts first, so the probe measures the server doing the
rollout's extra work (mirrored requests run twice).

The sustainable rate is a rate the server keeps up with for a whole ``--probe-s`` window,
open loop: starting from the closed-loop throughput of 8 clients, each try sends at a fixed
rate and the rate backs off by 20% until the window's p95 stays within ``--p95-bound-ms``
and every scheduled request was sent and answered. The soak then sends at ``--load`` (70%)
of it, on a fixed schedule, real Fashion-MNIST test PNGs. Every ``--sample-s`` the server's
RSS (split by ``/proc/PID/smaps`` into the glibc main heap, other anonymous memory such as
thread arenas and ONNX Runtime's buffers, and file-backed pages), open file descriptors and
the p95 of the requests sent in that window are recorded.

Goals (reported "met"/"MISSED", never asserted), measured after the warm-up: the first
``--warmup-s`` (120 s: the first sessions' arenas, the first drift tests, the rollout's first
analyses) and, if given, the first ``--warmup-requests`` answered, whichever ends later (the
server's memory of answered requests for ``POST /v1/feedback`` is allocated at start, so it
needs no warm-up of its own; it used to grow over its first 50,000). If less than two
minutes are left after it, the goals that need them are reported "not measured". Goals:
RSS growth <= 5%, open fds other than sockets flat (max - min <= 2; the sockets follow the
clients' connections and are reported beside them), p95 of the last minute within 10% of
the p95 of the first minute after the warm-up, zero 5xx. Writes ``soak.json`` and
``soak.png`` (RSS and its parts, fds and p95 over time).

When latency jumps, three records say whose fault it was: each window's ``client_late_ms``
(how late this client sent against its schedule: a stalled client, then a burst of the
requests it owed), the server's event-loop stall reports from its log (the watchdog of
``resnetkit.serve.watchdog``: the code the loop was in, or that it was not scheduled), and
for each request left without an answer the client's error and when it was sent.

To find what grows: ``--tracemalloc`` runs the server under :mod:`tracemalloc` (slower; only
to diagnose), snapshots it at the end of the warm-up and at the end, and writes the
allocation sites that grew most to ``tracemalloc.txt``. At the end the server is always
asked to ``malloc_trim(0)`` (SIGUSR2) and its RSS sampled again: memory that glibc gave back
was free (fragmentation), memory that stays is in use. ``--server-env MALLOC_ARENA_MAX=2``
runs the server with fewer malloc arenas.

    .venv/bin/python bench/soak.py --out runs/soak                    # 10 minutes
    .venv/bin/python bench/soak.py --out runs/soak --duration-s 240   # a shorter run
    .venv/bin/python bench/soak.py --out runs/soak-tm --duration-s 240 --tracemalloc
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from machine import describe, machine  # noqa: E402  (bench/ is not a package)

from resnetkit.serve.router import FEEDBACK_MEMORY  # noqa: E402

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


# The server's entry point under the soak: ``resnetkit serve``, optionally under
# tracemalloc or with a smaller memory of answered requests (to tell its growth from any
# other), with two debug signals (SIGUSR1: dump a tracemalloc snapshot; SIGUSR2:
# malloc_trim(0)); each handler touches a file when done, so the soak waits on that.
_SERVER_MAIN = r"""
import ctypes, signal, sys, tracemalloc
from pathlib import Path
out, frames, remembered, serve = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
if frames:
    tracemalloc.start(frames)
if remembered:
    from resnetkit.serve.router import RolloutRouter
    RolloutRouter.__init__.__kwdefaults__["feedback_memory"] = remembered
snapshots = []
def snapshot(signum, frame):
    snapshots.append(len(snapshots) + 1)
    tracemalloc.take_snapshot().dump(str(out / f"snapshot{snapshots[-1]}.tracemalloc"))
    (out / f"snapshot{snapshots[-1]}.done").touch()
def trim(signum, frame):
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    (out / "trimmed.done").touch()
signal.signal(signal.SIGUSR1, snapshot)
signal.signal(signal.SIGUSR2, trim)
from resnetkit.cli.main import main
sys.exit(main(serve))
"""


def start_server(
    work: Path,
    url: str,
    port: int,
    *,
    frames: int = 0,
    feedback_memory: int = 0,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    (work / "token").write_text(TOKEN)
    serve = [
        "serve", f"{MODEL}@production",
        "--registry", url, "--port", str(port), "--admin-token-file", str(work / "token"),
        "--threads", "1", "--rollout-poll-s", "1",
    ]  # fmt: skip
    cmd = [sys.executable, "-c", _SERVER_MAIN, str(work), str(frames), str(feedback_memory)]
    cmd += serve
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
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


def signal_and_wait(proc: subprocess.Popen[bytes], signum: int, done: Path) -> float:
    """Send ``signum`` to the server and wait for its handler's ``done`` file; seconds."""
    start = time.monotonic()
    done.unlink(missing_ok=True)
    proc.send_signal(signum)
    while not done.exists():
        if proc.poll() is not None or time.monotonic() - start > 300:
            raise SystemExit(f"the server did not handle signal {signum}")
        time.sleep(0.1)
    return time.monotonic() - start


def memory_mb(pid: int) -> dict[str, float]:
    """RSS of ``pid`` by kind of mapping (``/proc/PID/smaps``): ``heap`` (glibc's main
    arena), ``anon`` (other anonymous memory: thread arenas, large mallocs, ONNX Runtime's
    buffers, stacks) and ``file`` (code and mapped files)."""
    parts = {"heap": 0, "anon": 0, "file": 0}
    kind = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            path = fields[5] if len(fields) > 5 else ""
            kind = "heap" if path == "[heap]" else "file" if path.startswith("/") else "anon"
        elif fields and fields[0] == "Rss:":
            parts[kind] += int(fields[1])
    return {k: v / 1024 for k, v in parts.items()}


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
    # Requests with no answer (status 599), by the client's error and when they were sent.
    unanswered: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    # How late this client sent each request against its schedule: a stall of the client
    # (not of the server) shows here, followed by a burst of the requests it owed.
    late_s: list[float] = dataclasses.field(default_factory=list)

    def window_max_late_ms(self, start: float, end: float) -> float | None:
        """The most late this client sent a request due in ``[start, end)``."""
        chosen = [late for t, late in zip(self.sent, self.late_s, strict=True) if start <= t < end]
        return max(chosen) * 1000 if chosen else None

    def window_p95_ms(self, start: float, end: float) -> float | None:
        chosen = [lat for t, lat in zip(self.sent, self.latency_s, strict=True) if start <= t < end]
        return float(np.percentile(chosen, 95) * 1000) if chosen else None


async def _one(
    client: httpx.AsyncClient, body: bytes, load: Load, due: float | None = None
) -> None:
    sent = time.monotonic()
    try:
        answer = await client.post(
            f"/v1/models/{MODEL}/predict", content=body, headers={"content-type": "image/png"}
        )
        status = answer.status_code
    except httpx.HTTPError as exc:
        status = 599  # no answer at all: counted with the 5xx
        load.unanswered.append((sent, f"{type(exc).__name__}: {exc}"))
    load.sent.append(sent)
    load.late_s.append(0.0 if due is None else max(0.0, sent - due))
    load.latency_s.append(time.monotonic() - sent)
    load.status.append(status)


async def closed_loop_rate(base: str, bodies: list[bytes], seconds: float) -> float:
    """Throughput of 8 clients back to back for ``seconds``: an upper bound of what the
    server sustains (its queue stays full, so latency is not bounded)."""
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


async def probe_rate(
    base: str, bodies: list[bytes], seconds: float, p95_bound_ms: float
) -> tuple[float, list[dict[str, Any]]]:
    """The highest rate (from the closed-loop throughput down, 20% a try) at which a whole
    ``seconds`` window open loop keeps its p95 within ``p95_bound_ms`` with every request
    sent on schedule and answered 200; and every try, for the record."""
    rate = await closed_loop_rate(base, bodies, min(seconds, 10.0))
    tries: list[dict[str, Any]] = []
    for _ in range(12):
        load = await open_loop(base, bodies, rate, seconds)
        scheduled = int(rate * seconds)
        answered = sum(1 for s in load.status if s == 200)
        p95 = load.window_p95_ms(-math.inf, math.inf)
        kept_up = answered >= 0.99 * scheduled and p95 is not None and p95 <= p95_bound_ms
        tries.append({"rate_rps": round(rate, 1), "p95_ms": p95, "answered": answered,
                      "scheduled": scheduled, "sustained": kept_up})  # fmt: skip
        print(f"probe: {json.dumps(tries[-1])}", flush=True)
        if kept_up:
            return rate, tries
        rate *= 0.8
    raise SystemExit(f"no rate kept p95 within {p95_bound_ms} ms: {tries}")


async def open_loop(
    base: str, bodies: list[bytes], rate: float, seconds: float, sample: Any = None
) -> Load:
    """Send at ``rate`` per second for ``seconds``; ``sample(load)`` every few seconds."""
    load = Load()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        sampler = asyncio.create_task(sample(load)) if sample is not None else None
        i = 0
        while (now := time.monotonic()) < start + seconds:
            due = start + i / rate
            if due > now:
                await asyncio.sleep(due - now)
            if len(tasks) < MAX_OUTSTANDING:
                task = asyncio.create_task(_one(client, bodies[i % len(bodies)], load, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        if sampler is not None:
            sampler.cancel()
    return load


def warm(row: dict[str, Any], args: Any) -> bool:
    """Whether the warm-up is over at sample ``row``: time and requests both done."""
    return bool(row["t_s"] >= args.warmup_s and (row["sent"] or 0) >= args.warmup_requests)


def stall_reports(server_log: Path) -> list[str]:
    """The watchdog's lines in the server's log, each with the stack that follows it."""
    blocks: list[str] = []
    for line in server_log.read_text(errors="replace").splitlines():
        if "event loop" in line:
            blocks.append(line)
        elif blocks and line.startswith(("  ", "The loop", "Busy threads")):
            blocks[-1] += "\n" + line
    return blocks


def goals(samples: list[dict[str, Any]], load: Load, t0: float, args: Any) -> dict[str, Any]:
    warmed_s = next((r["t_s"] for r in samples if warm(r, args)), math.inf)
    after = [s for s in samples if s["t_s"] >= warmed_s]
    five_xx = sum(1 for s in load.status if s >= 500)
    result: dict[str, Any] = {
        "warmup_ended_s": after[0]["t_s"] if after else None,
        "five_xx": five_xx,
        "five_xx_ok": five_xx == 0,
        "requests": len(load.status),
        "statuses": {str(k): load.status.count(k) for k in sorted(set(load.status))},
        "unanswered": [
            {"sent_s": round(sent - t0, 2), "error": error} for sent, error in load.unanswered
        ],
    }
    if not after or after[-1]["t_s"] - after[0]["t_s"] < 120:
        # Not two minutes after the warm-up: RSS, fds and p95 are not measured.
        return result | {"rss_ok": None, "fds_ok": None, "p95_ok": None}
    rss0, rss1 = after[0]["rss_mb"], after[-1]["rss_mb"]
    fds = [s["fds"] for s in after]
    end = t0 + args.duration_s
    start = t0 + after[0]["t_s"]
    first = load.window_p95_ms(start, start + 60)
    last = load.window_p95_ms(end - 60, end)
    drift = (last / first - 1) if first and last else None
    return result | {
        "rss_after_warmup_mb": rss0,
        "rss_at_end_mb": rss1,
        "rss_growth": rss1 / rss0 - 1,
        "rss_ok": rss1 / rss0 - 1 <= 0.05,
        # which kind of memory grew after the warm-up (MB): heap, anon or file
        "growth_by_kind_mb": {k: after[-1][k] - after[0][k] for k in ("heap", "anon", "file")},
        "fds_min_max": [min(fds), max(fds)],
        "fds_ok": max(fds) - min(fds) <= 2,
        "sockets_min_max": [min(s["sockets"] for s in after), max(s["sockets"] for s in after)],
        "p95_first_minute_ms": first,
        "p95_last_minute_ms": last,
        "p95_change": drift,
        "p95_ok": drift is not None and drift <= 0.10,
    }


def tracemalloc_report(work: Path, top: int = 15) -> str:
    """The allocation sites that grew most between the two snapshots, with their stacks."""
    import tracemalloc

    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before = tracemalloc.Snapshot.load(str(work / "snapshot1.tracemalloc")).filter_traces(ignore)
    after = tracemalloc.Snapshot.load(str(work / "snapshot2.tracemalloc")).filter_traces(ignore)

    def total(snapshot: Any) -> float:
        return sum(t.size for t in snapshot.traces) / 1e6

    lines = [f"Python allocations traced: {total(before):.1f} MB after the warm-up, "
             f"{total(after):.1f} MB at the end", "", "by line:"]  # fmt: skip
    for stat in after.compare_to(before, "lineno")[:top]:
        lines.append(f"  {stat.size_diff / 1e6:+8.2f} MB {stat.count_diff:+8d} blocks  "
                     f"{stat.traceback[0]}")  # fmt: skip
    lines += ["", "by stack:"]
    for stat in after.compare_to(before, "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1e6:+.2f} MB ({stat.count_diff:+d} blocks), "
                     f"now {stat.size / 1e6:.2f} MB in {stat.count} blocks")  # fmt: skip
        lines.extend(
            f"    {line}" for line in stat.traceback.format(limit=10, most_recent_first=True)
        )
    return "\n".join(lines) + "\n"


def plot(samples: list[dict[str, Any]], path: Path, warmup_s: float | None) -> None:
    from resnetkit.fileio import new_figure, save_figure

    fig = new_figure(8, 7)
    axes = fig.subplots(3, 1, sharex=True)
    t = [s["t_s"] for s in samples]
    for key, label in (("rss_mb", "RSS"), ("heap", "main heap"), ("anon", "other anonymous"),
                       ("file", "file-backed")):  # fmt: skip
        axes[0].plot(t, [s[key] for s in samples], label=label)
    axes[0].set_ylabel("memory (MB)")
    axes[1].plot(t, [s["fds"] for s in samples])
    axes[1].set_ylabel("open fds")
    for key, label in (("p95_ms", "p95 latency"), ("client_late_ms", "client, most late")):
        axes[2].plot(t, [np.nan if s.get(key) is None else s[key] for s in samples], label=label)
    axes[2].set_ylabel("ms")
    axes[2].set_yscale("symlog", linthresh=10)
    axes[2].legend(loc="upper right", fontsize="small")
    for ax in axes:
        if warmup_s is not None:
            ax.axvline(warmup_s, color="grey", linestyle=":", label="end of warm-up")
    axes[0].legend(loc="center right", fontsize="small")
    axes[-1].set_xlabel("seconds")
    fig.suptitle("resnetkit serve soak: canary rollout and live drift on")
    save_figure(fig, path)


def start_rollout(base: str, duration_s: float) -> None:
    """A canary rollout that stays on for the whole soak: two steps of ``duration_s / 2``,
    and checks that the two (differently seeded) versions pass, since they disagree."""
    rollout = httpx.post(
        f"{base}/v1/admin/rollouts", headers={"authorization": f"Bearer {TOKEN}"},
        json={"model": MODEL, "canary": 2, "progress_deadline_s": 10 * duration_s,
              "alias": "production", "steps": [5, 25, 50], "interval_s": duration_s / 2,
              "min_requests": 20,
              "checks": {"min_agreement": 0.0, "max_confidence_shift": 1.0}},
        timeout=30,
    )  # fmt: skip
    print(f"rollout: {rollout.status_code} {rollout.text[:200]}", flush=True)
    if rollout.status_code != 201 and rollout.status_code != 200:
        raise SystemExit("the rollout did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=120.0)
    parser.add_argument("--warmup-requests", type=int, default=0,
                        help="requests answered before the warm-up ends")  # fmt: skip
    parser.add_argument("--probe-s", type=float, default=30.0, help="window of each probe try")
    parser.add_argument("--p95-bound-ms", type=float, default=250.0,
                        help="the p95 a sustainable rate keeps within")  # fmt: skip
    parser.add_argument("--load", type=float, default=0.7, help="share of the sustainable rate")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tracemalloc", type=int, nargs="?", const=12, default=0,
                        metavar="FRAMES", help="trace the server's allocations (slow)")  # fmt: skip
    parser.add_argument("--feedback-memory", type=int, default=0, metavar="N",
                        help="diagnosis: remember N answered requests, not 50,000")  # fmt: skip
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the server, e.g. MALLOC_ARENA_MAX=2")  # fmt: skip
    args = parser.parse_args()
    if args.duration_s < args.warmup_s + 120:
        raise SystemExit("--duration-s must leave at least two minutes after --warmup-s")
    if any("=" not in item for item in args.server_env):
        raise SystemExit("--server-env takes KEY=VALUE")
    env = dict(item.split("=", 1) for item in args.server_env)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(describe(info), flush=True)
    runs = train_versions(args.out)
    url = register(args.out, runs)
    bodies = images()
    proc = start_server(
        args.out, url, args.port, frames=args.tracemalloc, feedback_memory=args.feedback_memory,
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{args.port}"
    try:
        start_rollout(base, args.duration_s)
        sustainable, tries = asyncio.run(probe_rate(base, bodies, args.probe_s, args.p95_bound_ms))
        rate = args.load * sustainable
        print(f"sustainable {sustainable:.1f} req/s; soaking at {rate:.1f} req/s", flush=True)
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()

        def take(load: Load | None) -> dict[str, Any]:
            now = time.monotonic()
            fds, sockets = open_fds(proc.pid)
            parts = memory_mb(proc.pid)
            row = {
                "t_s": round(now - t0, 1), "rss_mb": rss_mb(proc.pid), **parts,
                "fds": fds, "sockets": sockets,
                "p95_ms": None if load is None else load.window_p95_ms(now - args.sample_s, now),
                "sent": None if load is None else len(load.status),
                "client_late_ms": (
                    None if load is None else load.window_max_late_ms(now - args.sample_s, now)
                ),
            }  # fmt: skip
            print(json.dumps({k: round(v, 1) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)  # fmt: skip
            return row

        async def sample(load: Load) -> None:
            snapped = False
            while True:
                await asyncio.sleep(args.sample_s)
                samples.append(take(load))
                if args.tracemalloc and not snapped and warm(samples[-1], args):
                    snapped = True
                    await asyncio.to_thread(
                        signal_and_wait, proc, signal.SIGUSR1, args.out / "snapshot1.done"
                    )

        load = asyncio.run(open_loop(base, bodies, rate, args.duration_s, sample))
        final = httpx.get(f"{base}/v1/rollouts/{MODEL}", timeout=30).json()
        if args.tracemalloc:
            signal_and_wait(proc, signal.SIGUSR1, args.out / "snapshot2.done")
        before_trim = take(None)
        signal_and_wait(proc, signal.SIGUSR2, args.out / "trimmed.done")
        after_trim = take(None)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result = goals(samples, load, t0, args)
    result |= {
        "sustainable_rps": sustainable, "probe": tries, "rate_rps": rate, "machine": info,
        "server_env": env, "tracemalloc_frames": args.tracemalloc,
        "feedback_memory": args.feedback_memory or FEEDBACK_MEMORY,
        "malloc_trim": {"before": before_trim, "after": after_trim},
        "rollout_state": final.get("state"), "rollout_step": final.get("step"),
        "rollout_reason": final.get("reason"),
        "duration_s": args.duration_s, "warmup_s": args.warmup_s, "samples": samples,
    }  # fmt: skip
    # The server's watchdog logs every stall of its event loop with where the loop was.
    result["event_loop_stalls"] = stall_reports(args.out / "server.log")
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    plot(samples, args.out / "soak.png", result["warmup_ended_s"])
    if args.tracemalloc and (args.out / "snapshot1.tracemalloc").exists():
        report = tracemalloc_report(args.out)
        (args.out / "tracemalloc.txt").write_text(report)
        print(report[:4000])
    verdicts = {True: "met", False: "MISSED", None: "not measured (run longer)"}
    for key in ("rss_ok", "fds_ok", "p95_ok", "five_xx_ok"):
        print(f"{key[:-3]:>8}: {verdicts[result[key]]}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "machine")}))


if __name__ == "__main__":
    main()
