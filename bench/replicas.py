"""Replicas behind a real reverse proxy: what a Kubernetes Deployment and Service rely on.

N ``resnetkit serve`` processes (default three) serve one model from one shared registry
(``--registry``: a SQLite file by default; pass a PostgreSQL URL to share a real database)
behind HAProxy from Debian, the Service's stand-in: health checks on ``/readyz`` every
250 ms, least-connections balancing, request bodies buffered whole, and retries with
redispatch to another replica on a refused connection, an empty answer or a timeout, for
inference and GET requests only (the admin routes are never retried once sent). A thread
pool posts real Fashion-MNIST PNGs through the proxy at a steady concurrency while:

(a) **rolling update**: each replica is replaced as a Deployment's RollingUpdate does it
    (maxSurge 1, maxUnavailable 0): start the new one, wait for its ``/readyz`` and for the
    proxy to count it up, then SIGTERM the old one and wait for it to exit. Goal: 0 failed.
(b) **SIGKILL** of one replica: only requests sent before the kill may fail (at most the
    requests in flight on it); every request sent after it succeeds.
(c) **queue depth under a load step** on one replica, scraped from its ``/metrics`` as
    Prometheus scrapes a pod: the HPA's ``desired = ceil(current * metric / target)``
    (target from ``deploy/base/horizontalpodautoscaler.yaml``, replicas kept in 1..N) over
    the series, current = 1, plotted with the metric. Nothing here scales anything.

    .venv/bin/python bench/replicas.py --out runs/replicas

writes ``replicas.json``, ``replicas.png`` and the logs. ``--model`` takes a run directory or
ONNX file; without it a small resnet8 is trained on 6,000 Fashion-MNIST images (seconds).
Needs ``haproxy`` (``apt-get install haproxy``; ``make system-deps`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
HPA_FILE = REPO / "deploy" / "base" / "horizontalpodautoscaler.yaml"
HPA_METRIC = "resnetkit_queue_depth_per_pod"
MODEL_NAME = "fashion"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
PROXY_TIMEOUT_S = 20.0
CHECK_INTERVAL_MS = 250


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; RuntimeError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.05)


def hpa_target() -> float:
    """The queue-depth target per pod of the HPA in ``deploy/base`` (its ``averageValue``)."""
    import yaml

    spec = yaml.safe_load(HPA_FILE.read_text())["spec"]
    for metric in spec["metrics"]:
        if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == HPA_METRIC:
            return float(metric["pods"]["target"]["averageValue"])
    raise RuntimeError(f"{HPA_FILE}: no Pods metric {HPA_METRIC}")


def desired_replicas(current: int, metric: float, target: float, max_replicas: int) -> int:
    """The HPA formula ``ceil(current * metric / target)``, kept in ``1..max_replicas``.

    Kubernetes skips a change within its 10% tolerance; so does this.
    """
    ratio = metric / target
    if abs(ratio - 1.0) <= 0.1:
        return current
    return max(1, min(max_replicas, math.ceil(current * ratio)))


# -- processes --------------------------------------------------------------------------------


@dataclass
class Replica:
    """One ``resnetkit serve`` process on a fixed port (a pod)."""

    port: int
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        cmd = [sys.executable, "-m", "resnetkit.cli.main", "serve", *self.args,
               "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        """``/readyz`` answers 200; RuntimeError if the process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"replica :{self.port} exited; see {self.log_path}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        wait_for(self.ready, READY_TIMEOUT_S, f"replica :{self.port} ready")

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self) -> int:
        """Wait for the process to end (SIGKILL after the drain's bound); its status."""
        assert self.proc is not None
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        if self.proc is not None:
            self.wait_exit()


def queue_depth(url: str) -> float:
    """``resnetkit_queue_depth`` summed over the models of one replica, from its ``/metrics``
    (what the prometheus-adapter rule in ``deploy/prometheus-adapter`` sums per pod)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("resnetkit_queue_depth{") or line.startswith("resnetkit_queue_depth ")
    )


HAPROXY_CONFIG = """\
global
    maxconn 512
    stats socket {socket} mode 600 level admin

defaults
    mode http
    # One log line per request that failed or was retried (termination flags, retries).
    log stderr format raw local0
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    # The Service's retries: a refused connection (a draining or dead replica), an empty
    # answer (killed mid-request) or a timeout is tried again on another replica.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    # The whole body is read before a replica is chosen, so a request that a killed replica
    # took is still whole in the proxy and can be sent again (without it: 2 of 8 lost).
    option http-buffer-request

frontend service
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance leastconn
    # Only requests that are safe to send twice are retried after they reached a replica:
    # predictions change nothing; the admin routes do.
    acl safe_method method GET HEAD
    acl inference path_end /predict /infer
    http-request disable-l7-retry if !safe_method !inference
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {interval}ms fall 1 rise 1
{servers}
"""


@dataclass
class Proxy:
    """HAProxy in the foreground over fixed server slots (one per port)."""

    slots: list[int]
    work: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.work / "haproxy.sock"

    def start(self) -> Proxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        servers = "\n".join(f"    server s{p} 127.0.0.1:{p} check" for p in self.slots)
        config = self.work / "haproxy.cfg"
        text = HAPROXY_CONFIG.format(
            socket=self.socket_path, port=self.port, interval=CHECK_INTERVAL_MS, servers=servers
        )
        config.write_text(text)
        subprocess.run([binary, "-c", "-q", "-f", str(config)], check=True, timeout=30)
        with (self.work / "haproxy.log").open("ab") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(self.socket_path.exists, PROXY_TIMEOUT_S, "haproxy stats socket")
        return self

    def states(self) -> dict[int, str]:
        """Each slot's status as the proxy sees it (``UP``, ``DOWN``...), by port."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        name, status = header.index("svname"), header.index("status")
        rows = [line.split(",") for line in lines[1:] if line]
        return {
            int(row[name][1:]): row[status].split(" ")[0]
            for row in rows
            if row[name].startswith("s") and row[name][1:].isdigit()
        }

    def wait_state(self, port: int, state: str) -> None:
        wait_for(lambda: self.states().get(port) == state, PROXY_TIMEOUT_S,
                 f"haproxy to see :{port} {state}")  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def haproxy_available() -> bool:
    return shutil.which("haproxy") is not None or Path("/usr/sbin/haproxy").exists()


# -- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent and answered (monotonic s), its status or error."""

    sent_s: float
    done_s: float
    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


class Load:
    """``concurrency`` threads posting PNGs to ``url`` in a closed loop until stopped."""

    def __init__(self, url: str, bodies: Sequence[bytes], concurrency: int) -> None:
        self.url = f"{url}/v1/models/{MODEL_NAME}/predict"
        self.bodies = bodies
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True)
                         for i in range(concurrency)]  # fmt: skip

    def _worker(self, index: int) -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            i = index
            while not self._stop.is_set():
                body = self.bodies[i % len(self.bodies)]
                i += len(self._threads)
                sent = time.monotonic()
                try:
                    files = {"file": ("x.png", body, "image/png")}
                    status: int | None = client.post(self.url, files=files).status_code
                    error = ""
                except httpx.HTTPError as exc:
                    status, error = None, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.outcomes.append(Outcome(sent, time.monotonic(), status, error))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_more(self, n: int, timeout_s: float = 60.0) -> None:
        """Wait until ``n`` more requests have been answered (bounded)."""
        target = self.count() + n
        wait_for(lambda: self.count() >= target, timeout_s, f"{n} more requests")


def fashion_pngs(limit: int = 64) -> list[bytes]:
    """Real Fashion-MNIST test images as PNG bytes."""
    from PIL import Image

    from resnetkit.data import load_dataset

    images = load_dataset("fashion-mnist", "test", limit=limit).images[:, 0]  # (N, 28, 28)
    out = []
    for pixels in (images.numpy() * 255).round().astype("uint8"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# -- the cluster stand-in ---------------------------------------------------------------------


def register_model(model: Path, registry: str, log: Path) -> None:
    """Register ``model`` as ``fashion@production`` in ``registry`` (the replicas' shared one)."""
    cmd = [sys.executable, "-m", "resnetkit.cli.main", "registry", "register", str(model),
           "--registry", registry, "--name", MODEL_NAME, "--alias", "production"]  # fmt: skip
    with log.open("ab") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)


@dataclass
class Cluster:
    """N replicas on half of 2N slots behind one proxy; the other half take replacements."""

    replicas: list[Replica]
    spare: list[int]
    proxy: Proxy
    serve_args: list[str]
    work: Path

    def replica(self, port: int) -> Replica:
        return Replica(port, self.serve_args, self.work / f"replica-{port}.log")

    def rolling_update(self) -> list[dict[str, float]]:
        """Replace every replica, one at a time, as RollingUpdate (maxSurge 1,
        maxUnavailable 0) does; each step's times (s)."""
        steps = []
        for i, old in enumerate(list(self.replicas)):
            t0 = time.monotonic()
            new = self.replica(self.spare[i]).start()
            new.wait_ready()
            self.proxy.wait_state(new.port, "UP")
            t_ready = time.monotonic()
            old.signal(signal.SIGTERM)
            status = old.wait_exit()
            steps.append({"ready_s": t_ready - t0, "drain_s": time.monotonic() - t_ready,
                          "exit_status": status})  # fmt: skip
            self.spare[i], self.replicas[i] = old.port, new
        return steps

    def stop(self) -> None:
        # The proxy first: its idle keep-alive connections would hold each drain to its bound.
        self.proxy.stop()
        for replica in self.replicas:
            replica.signal(signal.SIGTERM)
        for replica in self.replicas:
            replica.wait_exit()


@contextlib.contextmanager
def cluster(serve_args: list[str], n: int, work: Path) -> Iterator[Cluster]:
    """N ready replicas behind a proxy that counts them up, the spare slots down."""
    work.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(2 * n)]
    proxy = Proxy(ports, work)
    c = Cluster([], ports[n:], proxy, serve_args, work)
    try:
        c.replicas = [c.replica(p).start() for p in ports[:n]]
        proxy.start()
        for replica in c.replicas:
            replica.wait_ready()
        for port in ports[:n]:
            proxy.wait_state(port, "UP")
        for port in ports[n:]:
            proxy.wait_state(port, "DOWN")
        yield c
    finally:
        c.stop()


def failures(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


# -- the bench --------------------------------------------------------------------------------


def run_rolling(c: Cluster, bodies: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    with Load(c.proxy.url, bodies, concurrency) as load:
        load.wait_more(50)
        steps = c.rolling_update()
        load.wait_more(50)
    failed = failures(load.outcomes)
    return {"requests": len(load.outcomes), "failed": len(failed), "steps": steps,
            "errors": sorted({o.error or str(o.status) for o in failed})}  # fmt: skip


def run_kill(c: Cluster, bodies: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    victim = c.replicas[0]
    with Load(c.proxy.url, bodies, concurrency) as load:
        load.wait_more(50)
        t_kill = time.monotonic()
        victim.signal(signal.SIGKILL)
        victim.wait_exit()
        c.proxy.wait_state(victim.port, "DOWN")
        load.wait_more(100)
    failed = failures(load.outcomes)
    after = [o for o in load.outcomes if o.sent_s > t_kill]
    c.replicas.pop(0)
    return {"requests": len(load.outcomes), "failed": len(failed),
            "failed_sent_after_kill": len(failures(after)), "sent_after_kill": len(after),
            "bound_in_flight": concurrency,
            "errors": sorted({o.error or str(o.status) for o in failed})}  # fmt: skip


def run_step(
    replica: Replica, bodies: Sequence[bytes], phases: Sequence[tuple[int, float]], n: int
) -> dict[str, Any]:
    """Closed-loop load at each (concurrency, seconds) phase on one replica; the queue depth
    scraped every 0.25 s and the HPA's desired replica count (current 1) at each scrape."""
    target, series, t0 = hpa_target(), [], time.monotonic()
    for concurrency, seconds in phases:
        load = Load(replica.url, bodies, concurrency) if concurrency else None
        with load or contextlib.nullcontext():
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                depth = queue_depth(replica.url)
                series.append({"t_s": time.monotonic() - t0, "concurrency": concurrency,
                               "queue_depth": depth,
                               "desired": desired_replicas(1, depth, target, n)})  # fmt: skip
                time.sleep(0.25)  # the scrape interval, not a synchronisation
    return {"target": target, "series": series}


def plot(step: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["t_s"] for p in step["series"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [p["queue_depth"] for p in step["series"]], label="resnetkit_queue_depth")
    ax.axhline(step["target"], color="grey", linestyle=":", label="HPA target per pod")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("samples queued (one replica)")
    right = ax.twinx()
    right.step(t, [p["desired"] for p in step["series"]], color="C3", where="post",
               label="desired replicas (current 1)")  # fmt: skip
    right.set_ylabel("desired replicas")
    right.set_ylim(0, max(p["desired"] for p in step["series"]) + 1)
    high = [p["t_s"] for p in step["series"] if p["concurrency"] > 1]
    if high:
        ax.axvspan(min(high), max(high), color="C1", alpha=0.15, label="load step")
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.86))
    ax.set_title("Load step: queue depth and ceil(current * metric / target)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/replicas"))
    parser.add_argument("--model", type=Path, help="run directory or .onnx (default: train)")
    parser.add_argument("--registry", help="shared registry URL (default: SQLite in --out)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--step-seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.concurrency < 1 or args.step_seconds <= 0:
        parser.error("--replicas and --concurrency must be at least 1, --step-seconds > 0")
    if args.model is not None and not args.model.exists():
        parser.error(f"--model {args.model}: no such file or directory")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not haproxy_available():
        sys.exit("error: haproxy not found: apt-get install haproxy (or make system-deps)")
    sys.path.insert(0, str(REPO))
    from bench.machine import describe

    print(describe())
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from tests.export.rundir import trained_run_dir

        model = trained_run_dir(str(out))
    registry = args.registry or f"sqlite:///{out / 'registry.db'}"
    register_model(model, registry, out / "register.log")
    serve_args = [f"{MODEL_NAME}@production", "--registry", registry, "--threads", "1"]
    bodies = fashion_pngs()
    report: dict[str, Any] = {"replicas": args.replicas, "concurrency": args.concurrency,
                              "registry": registry.split("://")[0]}  # fmt: skip
    with cluster(serve_args, args.replicas, out / "rolling") as c:
        report["rolling_update"] = r = run_rolling(c, bodies, args.concurrency)
    print(f"(a) rolling update of {args.replicas} replicas under load: {r['requests']} requests, "
          f"{r['failed']} failed (goal 0: {'met' if r['failed'] == 0 else 'MISSED'})")  # fmt: skip
    with cluster(serve_args, args.replicas, out / "kill") as c:
        report["sigkill"] = k = run_kill(c, bodies, args.concurrency)
    print(f"(b) SIGKILL of one replica: {k['requests']} requests, {k['failed']} failed "
          f"(at most {k['bound_in_flight']} in flight), {k['failed_sent_after_kill']} of "
          f"{k['sent_after_kill']} sent after the kill failed")  # fmt: skip
    # Small batches, so a queue forms at a concurrency two cores can drive.
    step_args = [*serve_args, "--max-batch-size", "4"]
    replica = Replica(free_port(), step_args, out / "step-replica.log").start()
    try:
        replica.wait_ready()
        s = args.step_seconds
        report["load_step"] = step = run_step(
            replica, bodies, [(1, s), (32, s), (0, s / 2), (1, s)], args.replicas
        )
    finally:
        replica.stop()
    desired = [p["desired"] for p in step["series"]]
    depth = max(p["queue_depth"] for p in step["series"])
    print(f"(c) load step 1 -> 32 -> 1 client(s): queue depth max {depth:.0f}, target "
          f"{step['target']:g}; desired replicas first {desired[0]}, max {max(desired)}, "
          f"last {desired[-1]}")  # fmt: skip
    plot(step, out / "replicas.png")
    (out / "replicas.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'replicas.json'} and {out / 'replicas.png'}")


if __name__ == "__main__":
    main()
