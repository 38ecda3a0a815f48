"""Serving throughput and tail latency: resnetkit beside TorchServe and a plain FastAPI endpoint.

Every server runs on the same model, pinned to the same CPU cores (``--cpus``, default two),
one at a time, each stopped before the next starts. An asyncio load generator (httpx) on the
*same* cores posts real JPEG (PNG) images at rising concurrency, a bounded number of requests
per level, and reports per server and level: throughput, p50/p95/p99 latency, errors by status,
and the CPU the server and the load generator used. Per server, the highest throughput with
p95 <= 200 ms (and no errors) is the number compared; ratios are against TorchServe.

Servers: resnetkit ``serve`` with ``--backend onnx`` on an int8 and an fp32 ONNX file and with
``--backend torch`` on the weights (its defaults: batches of up to 32, 5 ms delay); a plain
FastAPI endpoint under uvicorn (Pillow decode, one eager torch forward pass per request, no
batching: the naive baseline, defined below); TorchServe 0.12 (eager model from
``bench/torchserve/model.py`` + state dict, handler ``bench/torchserve/handler.py``, batch 32 /
5 ms, ``OMP_WAIT_POLICY=PASSIVE``, in its own virtual environment, Java 17).
Models: (A) resnet18 at 224x224 with random but fixed weights (speed does not depend on the
weights), fed 512x512 JPEGs of ``skimage.data`` photos that the servers resize; (B) a trained
Fashion-MNIST run (``--run``; without it the full run trains one epoch of the quickstart recipe)
fed its 28x28 test images as PNG. Also for resnetkit: int8/fp32 top-1 agreement on all 10,000
Fashion-MNIST test images, and an overload test (open loop at 3x the int8 server's sustainable
rate with a small ``--queue-size``: 503s with Retry-After, the server's RSS, p95 of the admitted
requests against the unloaded p95). Goals are reported ("met"/"MISSED"), never asserted.

The full run (20-40 minutes on two quiet cores; writes results.json, serve_bench.png, logs):

    .venv/bin/python bench/serve_bench.py --out runs/serve-bench

Development: ``--quick`` (three levels, few requests, resnet18 only unless ``--run`` is given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves route annotations here

from resnetkit.cost import DEFAULT_PRICES, Prices, cost, load_prices
from resnetkit.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TS_DIR = BENCH_DIR / "torchserve"
DEFAULT_TS_VENV = Path("/tmp/resnetkit-torchserve-venv")
P95_BUDGET_MS = 200.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
          "hubble_deep_field", "retina", "camera", "coins", "moon")  # fmt: skip
SERVERS = ("onnx-int8", "onnx-fp32", "torch", "fastapi", "torchserve")
LABELS = {
    "onnx-int8": "resnetkit onnx int8",
    "onnx-fp32": "resnetkit onnx fp32",
    "torch": "resnetkit torch",
    "fastapi": "plain FastAPI (naive)",
    "torchserve": "TorchServe 0.12",
}
GOALS = {"onnx-int8": 3.0, "onnx-fp32": 1.5}  # sustainable throughput, x TorchServe
START_TIMEOUT_S = {"torchserve": 300.0}
DEFAULT_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
DATA = ("--data", "fashion-mnist")  # explicit: a run saved without config.toml works too


class RunTimeout(Exception):
    """The whole run passed ``--max-run-s``."""


# -- inputs ---------------------------------------------------------------------------------


@dataclass
class Workload:
    """One model as every server needs it, and the request bodies that exercise it."""

    key: str  # "resnet18" or "fashion"
    title: str
    model_dir: Path  # model.safetensors + model.json: resnetkit torch and the naive server
    fp32: Path
    int8: Path
    bodies: list[bytes]
    content_type: str
    notes: list[str] = field(default_factory=list)


def photo_arrays(size: int) -> list[np.ndarray]:
    """Real photos from scikit-image, RGB ``(size, size, 3)`` uint8, each also mirrored."""
    import skimage.data
    from PIL import Image

    out = []
    for name in PHOTOS:
        pixels = np.asarray(getattr(skimage.data, name)())
        image = Image.fromarray(pixels).convert("RGB").resize((size, size), Image.BILINEAR)
        out += [np.asarray(image), np.asarray(image)[:, ::-1].copy()]
    return out


def encode(arrays: Sequence[np.ndarray], fmt: str) -> list[bytes]:
    """Encode ``(H, W, 3)`` or ``(H, W)`` uint8 arrays as JPEG (quality 90) or PNG."""
    from PIL import Image

    bodies = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        bodies.append(buf.getvalue())
    return bodies


def build_random(
    work: Path, arch: str, size: int, num_classes: int, seed: int, calib_images: int
) -> tuple[Path, Path, Path]:
    """A zoo model at ``size`` x ``size`` RGB with seeded random weights: its weights folder,
    fp32 and int8 (static QDQ, minmax on real photos) ONNX files, built once per settings."""
    import torch

    from resnetkit.compress import quantize_onnx
    from resnetkit.data import PreprocessingSpec, normalize
    from resnetkit.export import export_onnx
    from resnetkit.models import create_model, save_model
    from resnetkit.onnxio import card_metadata

    spec = PreprocessingSpec(size=(size, size), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    folder = work / arch
    files = (folder, work / f"{arch}-fp32.onnx", work / f"{arch}-int8.onnx")
    stamp = folder / "bench-build.json"
    wanted = {"seed": seed, "calib_images": calib_images, "size": size, "classes": num_classes}
    if not (
        stamp.is_file()
        and json.loads(stamp.read_text()) == wanted
        and all(f.is_file() for f in (folder / "model.safetensors", *files[1:]))
    ):
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=num_classes).eval()
        card = save_model(
            model, folder, arch=arch, kwargs={"num_classes": num_classes}, preprocessing=spec
        )
        export_onnx(model, files[1], input_size=(3, size, size), metadata=card_metadata(card))
        crops = np.stack(photo_arrays(size)[:calib_images]).transpose(0, 3, 1, 2)
        quantize_onnx(files[1], files[2], normalize(torch.from_numpy(crops), spec), method="minmax")
        stamp.write_text(json.dumps(wanted))
    return files


def build_resnet18(work: Path, seed: int, calib_images: int) -> Workload:
    """resnet18 (1000 classes, 224x224, seeded random weights): weights, fp32 and int8 ONNX."""
    folder, fp32, int8 = build_random(work, "resnet18", 224, 1000, seed, calib_images)
    return Workload(
        key="resnet18",
        title="(A) resnet18, 224x224, random fixed weights; 512x512 JPEG photos",
        model_dir=folder,
        fp32=fp32,
        int8=int8,
        bodies=encode(photo_arrays(512), "JPEG"),
        content_type="image/jpeg",
        notes=[
            f"int8: static QDQ, minmax calibration on {calib_images} photos (resnetkit."
            "compress.quantize_onnx)"
        ],
    )


def resnetkit_cli(args: list[str], timeout_s: float, log: Path) -> int:
    """Run ``resnetkit ARGS`` (bounded); its output goes to ``log``."""
    with log.open("a") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "resnetkit.cli.main", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    return proc.returncode


def build_fashion(run: Path, work: Path, log: Path) -> Workload:
    """A Fashion-MNIST run: ``resnetkit export`` and ``resnetkit quantize`` (the CLI)."""
    from resnetkit.export import load_model_ref
    from resnetkit.onnxio import read_metadata

    loaded = load_model_ref(str(run))
    fp32, int8 = work / "fashion-fp32.onnx", work / "fashion-int8.onnx"
    stamp = work / "fashion-build.json"
    wanted = {"run": str(run.resolve()), "sha256": loaded.identity.sha256}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        for f in (fp32, int8, stamp):  # another run's files: build again
            f.unlink(missing_ok=True)
    if not fp32.is_file() and resnetkit_cli(["export", str(run), "-o", str(fp32), *DATA], 900, log):
        raise RuntimeError(f"resnetkit export failed; see {log}")
    if not int8.is_file():  # exit 1 with the file written: over its accuracy budget
        resnetkit_cli(["quantize", str(run), "-o", str(int8), *DATA], 1800, log)
        if not int8.is_file():
            raise RuntimeError(f"resnetkit quantize failed; see {log}")
    stamp.write_text(json.dumps(wanted))
    report = read_metadata(int8).get("quantization_report", {})
    notes = [
        f"int8: `resnetkit quantize` ({report.get('method')} calibration): top-1 "
        f"{report.get('fp32_top1', 0):.2%} -> {report.get('int8_top1', 0):.2%}, "
        f"{'accepted' if report.get('accepted') else 'REJECTED'} by its budget"
    ]
    test = loaded.dataset("test", data=DATA[1], limit=256).images.numpy()  # (N, 1, 28, 28) uint8
    return Workload(
        key="fashion",
        title=f"(B) Fashion-MNIST {loaded.card.arch} ({run}); 28x28 PNG",
        model_dir=run,
        fp32=fp32,
        int8=int8,
        bodies=encode([a[0] for a in test], "PNG"),
        content_type="image/png",
        notes=notes,
    )


def train_fashion(work: Path, log: Path) -> Path:
    """One epoch of the quickstart recipe (a few minutes on two cores)."""
    out = work / "fashion-run"
    if not (out / "model.safetensors").is_file():
        shutil.rmtree(out, ignore_errors=True)  # an interrupted run of this script's: anew
        args = [
            "train",
            "--config",
            str(REPO / "configs" / "fashion_mnist_fast.toml"),
            "--epochs",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
        if resnetkit_cli(args, 1800, log) != 0:
            raise RuntimeError(f"training the Fashion-MNIST run failed; see {log}")
    return out


def int8_agreement(work: Workload, threads: int) -> dict[str, Any]:
    """Top-1 agreement of the int8 and fp32 ONNX files on every Fashion-MNIST test image."""
    from resnetkit.export import OnnxBackend, load_model_ref

    loaded = load_model_ref(str(work.model_dir))
    test = loaded.dataset("test", data=DATA[1])
    x = loaded.normalized(test.images).numpy()
    labels = test.labels.numpy()
    top1 = {}
    for name, path in (("fp32", work.fp32), ("int8", work.int8)):
        backend = OnnxBackend(path, name=name, threads=threads)
        top1[name] = np.concatenate(
            [backend.predict(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]
        )
    return {
        "images": len(x),
        "agreement": float((top1["fp32"] == top1["int8"]).mean()),
        "fp32_top1": float((top1["fp32"] == labels).mean()),
        "int8_top1": float((top1["int8"] == labels).mean()),
    }


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (those still running)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """``VmRSS`` (or ``VmHWM``) of one process, from /proc/PID/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """``VmRSS`` of ``pid`` and its descendants (those still running), in MB."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            total += rss_mb(p)
    return total


@dataclass
class ManagedServer:
    """A server subprocess in its own session, with its readiness and predict URLs."""

    key: str
    cmd: list[str]
    env: dict[str, str]
    ready_url: str
    predict_url: str
    log_path: Path
    stop_cmd: list[str] | None = None  # how the server wants to be stopped (TorchServe)
    info: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, probe: bytes, content_type: str) -> None:
        """Start, then poll readiness and one real prediction until 200 (bounded)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        RUNNING.append(self)
        timeout_s = START_TIMEOUT_S.get(self.key, DEFAULT_START_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=10, trust_env=False) as client:
            for url, body in ((self.ready_url, None), (self.predict_url, probe)):
                while (status := _status(client, url, body, content_type)) != 200:
                    if body and status not in (None, 404, 503):  # a real answer, not "wait"
                        raise RuntimeError(f"{self.key}: {url} answered {status}; see "
                                           f"{self.log_path}")  # fmt: skip
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"{self.key} exited ({self.proc.returncode}); see {self.log_path}"
                        )
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.key} not ready in {timeout_s:.0f} s; see {self.log_path}"
                        )
                    time.sleep(0.5)

    def stop(self) -> None:
        """The server's own stop command or SIGTERM, then SIGKILL whatever is left of what it
        started (TorchServe's Java frontend and Python workers, say)."""
        if self.proc is None:
            return
        started = process_tree(self.proc.pid)[1:]  # before the leader exits and is reaped
        if self.stop_cmd is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(self.stop_cmd, env=self.env, timeout=STOP_TIMEOUT_S, check=False,
                               capture_output=True)  # fmt: skip
        elif self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for pid in started:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == self.proc.pid:  # still ours: same process group
                    os.kill(pid, signal.SIGKILL)
        if self in RUNNING:
            RUNNING.remove(self)


def _status(client: httpx.Client, url: str, body: bytes | None, content_type: str) -> int | None:
    """The status of a GET (``body`` None) or POST, None when nothing answered."""
    try:
        if body is None:
            return client.get(url).status_code
        return client.post(url, content=body, headers={"content-type": content_type}).status_code
    except httpx.HTTPError:
        return None


RUNNING: list[ManagedServer] = []  # every started server, so any exit path stops them


@contextlib.contextmanager
def serving(server: ManagedServer, work: Workload) -> Iterator[ManagedServer]:
    """A ready server for the ``with`` block, always stopped afterwards."""
    try:
        server.start(work.bodies[0], work.content_type)
        yield server
    finally:
        server.stop()


# -- the servers ----------------------------------------------------------------------------


def resnetkit_server(
    key: str,
    work: Workload,
    dirs: Path,
    threads: int,
    queue_size: int | None = None,
    max_queue_wait_ms: float | None = None,
) -> ManagedServer:
    """``resnetkit serve`` with its defaults, ``--threads`` set to the pinned cores."""
    ref, backend = {
        "onnx-int8": (work.int8, "onnx"),
        "onnx-fp32": (work.fp32, "onnx"),
        "torch": (work.model_dir, "torch"),
    }[key]
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "resnetkit.cli.main",
        "serve",
        str(ref),
        "--backend",
        backend,
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    if queue_size is not None:
        cmd += ["--queue-size", str(queue_size)]
    if max_queue_wait_ms is not None:
        cmd += ["--max-queue-wait-ms", str(max_queue_wait_ms)]
    env = {**os.environ, "RESNETKIT_CACHE": str(dirs / "cache")}
    url = f"http://127.0.0.1:{port}"
    suffix = f"-q{queue_size}" if queue_size else ""
    return ManagedServer(
        key,
        cmd,
        env,
        f"{url}/readyz",
        f"{url}/v1/predict",
        dirs / "logs" / f"{work.key}-{key}{suffix}.log",
        info={"command": " ".join(cmd[1:])},
    )


def fastapi_server(work: Workload, dirs: Path, threads: int) -> ManagedServer:
    """The naive baseline: this file's :func:`naive_app` under uvicorn."""
    port = free_port()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--naive-server",
        str(work.model_dir),
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    url = f"http://127.0.0.1:{port}"
    return ManagedServer(
        "fastapi",
        cmd,
        dict(os.environ),
        f"{url}/ready",
        f"{url}/predict",
        dirs / "logs" / f"{work.key}-fastapi.log",
        info={"server": "FastAPI + uvicorn, 1 worker, sync torch per request"},
    )


@dataclass(frozen=True)
class TorchServeSettings:
    """TorchServe's knobs, set as its documentation advises for CPU batching."""

    workers: int = 1
    batch_size: int = 32
    max_batch_delay_ms: int = 5
    job_queue_size: int = 256
    threads: int = 2  # cores; each worker gets threads // workers intra-op threads
    # PASSIVE: idle OpenMP threads sleep instead of spinning. With the load generator on the
    # same cores, spinning made a batch-1 forward pass 3-10x slower in TorchServe's worker.
    omp_wait_policy: str = "PASSIVE"


def ensure_torchserve_venv(venv: Path, log: Path) -> None:
    """Create (or update) TorchServe's virtual environment from bench/torchserve/requirements.txt.

    A marker in the environment holds the requirements it was made from; pip runs only when
    they differ.
    """
    requirements = TS_DIR / "requirements.txt"
    marker = venv / "serve-bench-requirements.txt"
    if marker.is_file() and marker.read_text() == requirements.read_text():
        return
    print(f"installing TorchServe into {venv} (pip; minutes the first time)", flush=True)
    with log.open("a") as fh:
        if not (venv / "bin" / "pip").is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=fh,
                           stderr=subprocess.STDOUT, timeout=600, check=True)  # fmt: skip
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements)],
                       stdout=fh, stderr=subprocess.STDOUT, timeout=1800, check=True)  # fmt: skip
    shutil.copyfile(requirements, marker)


def torchserve_archive(work: Workload, venv: Path, dirs: Path, cfg: TorchServeSettings) -> Path:
    """``torch-model-archiver``: model.py + a state dict (eager, as TorchServe's own resnet-18
    example serves it), model.json, the handler, and the batching settings."""
    import torch
    from safetensors.torch import load_file

    stage = dirs / f"ts-{work.key}"
    store = stage / "store"
    store.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(work.model_dir / "model.safetensors"))
    # TorchServe reads the weights with torch.load: a bench scratch file, not an artifact.
    torch.save({f"net.{k}": v for k, v in weights.items()}, stage / "state_dict.pt")
    (stage / "model-config.yaml").write_text(
        f"minWorkers: {cfg.workers}\nmaxWorkers: {cfg.workers}\nbatchSize: {cfg.batch_size}\n"
        f"maxBatchDelay: {cfg.max_batch_delay_ms}\nresponseTimeout: 120\n"
    )
    cmd = [str(venv / "bin" / "torch-model-archiver"), "--model-name", work.key,
           "--version", "1.0", "--model-file", str(TS_DIR / "model.py"),
           "--serialized-file", str(stage / "state_dict.pt"),
           "--handler", str(TS_DIR / "handler.py"),
           "--extra-files", str(work.model_dir / "model.json"),
           "--config-file", str(stage / "model-config.yaml"),
           "--export-path", str(store), "--force"]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=600, capture_output=True)
    return store


def torchserve_server(
    work: Workload, venv: Path, dirs: Path, cfg: TorchServeSettings
) -> ManagedServer:
    """TorchServe in the foreground, in its own session, on loopback ports."""
    store = torchserve_archive(work, venv, dirs, cfg)
    stage = store.parent
    ports = [free_port() for _ in range(3)]
    properties = {
        "inference_address": f"http://127.0.0.1:{ports[0]}",
        "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}",
        "number_of_netty_threads": cfg.threads,
        "netty_client_threads": cfg.threads,
        "default_workers_per_model": cfg.workers,
        "job_queue_size": cfg.job_queue_size,
        "async_logging": "true",
        "disable_system_metrics": "true",
        "default_response_timeout": 120,
    }
    config = stage / "config.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    per_worker = max(1, cfg.threads // cfg.workers)
    scratch = stage / "tmp"  # TorchServe's pid file lives in TMPDIR: keep it to this run
    scratch.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "LOG_LOCATION": str(stage / "logs"),
        "METRICS_LOCATION": str(stage / "logs"),
        "OMP_NUM_THREADS": str(per_worker),
        **({"OMP_WAIT_POLICY": cfg.omp_wait_policy} if cfg.omp_wait_policy else {}),
        "BENCH_TORCH_THREADS": str(per_worker),
        "PYTHONPATH": str(REPO / "src"),  # model.py builds the model with resnetkit.models
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    ts = str(venv / "bin" / "torchserve")
    cmd = [
        ts,
        "--start",
        "--foreground",
        "--ncs",
        "--disable-token-auth",
        "--model-store",
        str(store),
        "--models",
        f"{work.key}={work.key}.mar",
        "--ts-config",
        str(config),
    ]
    info = {
        "config.properties": properties,
        "model-config.yaml": (stage / "model-config.yaml").read_text(),
        "intra_op_threads_per_worker": per_worker,
        "OMP_WAIT_POLICY": cfg.omp_wait_policy or "(default: active)",
        "model": "eager: bench/torchserve/model.py (resnetkit's module code) + state dict",
    }
    return ManagedServer(
        "torchserve",
        cmd,
        env,
        f"{properties['inference_address']}/ping",
        f"{properties['inference_address']}/predictions/{work.key}",
        dirs / "logs" / f"{work.key}-torchserve.log",
        stop_cmd=[ts, "--stop"],
        info=info,
    )


def describe_torchserve(server: ManagedServer, name: str) -> dict[str, Any]:
    """What TorchServe says it runs (batch size, delay, workers): proof the config took."""
    url = server.info["config.properties"]["management_address"] + f"/models/{name}"
    with contextlib.suppress(httpx.HTTPError, ValueError, IndexError, KeyError):
        model = httpx.get(url, timeout=10, trust_env=False).json()[0]
        return {
            k: model.get(k)
            for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout")
        } | {"workers": len(model.get("workers", []))}
    return {}


# -- the load generator ---------------------------------------------------------------------


@dataclass
class Sample:
    """One request: status (``"200"``, ``"503"``, ``"timeout"``, ``"error"``), latency."""

    status: str
    latency_s: float
    retry_after: str | None = None  # the Retry-After header, when the answer had one


async def _post(client: httpx.AsyncClient, url: str, body: bytes, content_type: str) -> Sample:
    t0 = time.perf_counter()
    try:
        r = await client.post(url, content=body, headers={"content-type": content_type})
        await r.aread()
        status, retry = str(r.status_code), r.headers.get("retry-after")
    except httpx.TimeoutException:
        status, retry = "timeout", None
    except httpx.HTTPError:
        status, retry = "error", None
    return Sample(status, time.perf_counter() - t0, retry)


def _client(connections: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False)


async def closed_loop(
    url: str, work: Workload, concurrency: int, total: int, max_s: float, timeout_s: float
) -> tuple[list[Sample], float]:
    """``concurrency`` clients, each sending its next request on the last answer; at most
    ``total`` requests and ``max_s`` seconds. Returns the samples and the wall time."""
    sent = 0
    samples: list[Sample] = []
    start = time.perf_counter()
    async with _client(concurrency, timeout_s) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < total and time.perf_counter() - start < max_s:
                body = work.bodies[sent % len(work.bodies)]
                sent += 1
                samples.append(await _post(client, url, body, work.content_type))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


async def open_loop(
    url: str,
    work: Workload,
    rate: float,
    duration_s: float,
    max_inflight: int,
    timeout_s: float,
    pid: int,
) -> dict[str, Any]:
    """Requests at a fixed arrival rate for ``duration_s`` (bounded in count and in flight),
    sampling the server's RSS every 100 ms: ``rss`` is ``[(seconds, MB), ...]``."""
    samples: list[Sample] = []
    skipped = 0
    rss: list[tuple[float, float]] = []
    total = int(rate * duration_s)
    async with _client(max_inflight, timeout_s) as client:

        async def one(i: int) -> None:
            body = work.bodies[i % len(work.bodies)]
            samples.append(await _post(client, url, body, work.content_type))

        async def watch() -> None:
            while True:
                rss.append((time.perf_counter() - start, rss_mb(pid)))
                await asyncio.sleep(0.1)

        start = time.perf_counter()
        watcher = asyncio.create_task(watch())
        tasks: set[asyncio.Task[None]] = set()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= max_inflight:
                skipped += 1  # the client cannot hold more: counted, not sent
                continue
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        offered_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        wall_s = time.perf_counter() - start
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return {
        "samples": samples,
        "skipped": skipped,
        "offered_s": offered_s,
        "wall_s": wall_s,
        "rss": rss,
    }


def percentiles_ms(samples: Sequence[Sample]) -> dict[str, float | None]:
    """p50/p95/p99 of the successful (200) requests, in ms."""
    ok = [s.latency_s * 1000 for s in samples if s.status == "200"]
    if not ok:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p50, p95, p99 = np.percentile(ok, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def warm_up(url: str, work: Workload, concurrency: int, args: argparse.Namespace) -> None:
    """Load for ``--warmup-s`` seconds, untimed: TorchServe's JVM compiles its hot paths only
    under load, and every server sizes its buffers for the batches it will see."""
    total = 1 << 20  # bounded by the time
    asyncio.run(closed_loop(url, work, concurrency, total, args.warmup_s, args.request_timeout_s))


def run_level(
    server: ManagedServer, work: Workload, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One concurrency level: throughput of 200s, latency percentiles, errors, CPU used."""
    total = max(args.requests, args.per_client * concurrency)
    cpu0, gen0 = tree_cpu_s(server.pid), time.process_time()
    samples, wall_s = asyncio.run(
        closed_loop(
            server.predict_url, work, concurrency, total, args.level_max_s, args.request_timeout_s
        )
    )
    cpu1, gen1 = tree_cpu_s(server.pid), time.process_time()
    statuses = Counter(s.status for s in samples)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "wall_s": wall_s,
        "throughput": statuses["200"] / wall_s,
        **percentiles_ms(samples),
        "errors": {k: v for k, v in statuses.items() if k != "200"},
        "server_cpu_pct": 100 * (cpu1 - cpu0) / wall_s,
        "loadgen_cpu_pct": 100 * (gen1 - gen0) / wall_s,
        "server_cpu_s": cpu1 - cpu0,
        "server_rss_mb": tree_rss_mb(server.pid),
    }


def sustainable(levels: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The level with the highest throughput whose p95 is within budget and had no errors."""
    good = [
        lv
        for lv in levels
        if lv["p95_ms"] is not None and lv["p95_ms"] <= P95_BUDGET_MS and not lv["errors"]
    ]
    return max(good, key=lambda lv: lv["throughput"]) if good else None


def sweep(
    server: ManagedServer, work: Workload, args: argparse.Namespace, levels: list[dict[str, Any]]
) -> None:
    """Warm up, then every level in order into ``levels``; stop once p95 is far past budget."""
    warm_up(server.predict_url, work, 8, args)
    for c in args.levels:
        check_deadline(args)
        level = run_level(server, work, c, args)
        levels.append(level)
        print_level(LABELS[server.key], level)
        if level["p95_ms"] is None or level["p95_ms"] > args.stop_p95_ms:
            print(f"|   (p95 over {args.stop_p95_ms:.0f} ms: higher levels skipped) |")
            break


def overload(
    work: Workload, dirs: Path, knee: dict[str, Any], args: argparse.Namespace, threads: int
) -> dict[str, Any]:
    """resnetkit int8 with a small queue: warm at the knee, p95 unloaded (one client), then
    an open loop at ``--overload-factor`` x the sustainable rate ``knee["throughput"]``."""
    server = resnetkit_server(
        "onnx-int8",
        work,
        dirs,
        threads,
        queue_size=args.overload_queue,
        max_queue_wait_ms=args.overload_max_queue_wait_ms or None,
    )
    rate = args.overload_factor * knee["throughput"]
    with serving(server, work):
        url, timeout_s = server.predict_url, args.request_timeout_s
        c = min(knee["concurrency"], args.overload_queue)  # steady state: arenas, buffers
        warm_up(url, work, c, args)
        unloaded, _ = asyncio.run(closed_loop(url, work, 1, args.requests, 60, timeout_s))
        rss_before = rss_mb(server.pid)
        check_deadline(args)
        run = asyncio.run(
            open_loop(
                url, work, rate, args.overload_s, args.overload_inflight, timeout_s, server.pid
            )
        )
        time.sleep(1.0)
        rss_after, hwm = rss_mb(server.pid), rss_mb(server.pid, "VmHWM")
    samples = run["samples"]
    statuses = Counter(s.status for s in samples)
    retry = Counter(s.retry_after for s in samples if s.status == "503")
    half = run["offered_s"] / 2
    first = max((mb for t, mb in run["rss"] if t <= half), default=float("nan"))
    second = max((mb for t, mb in run["rss"] if t > half), default=float("nan"))
    admitted = percentiles_ms(samples)
    base_p95 = percentiles_ms(unloaded)["p95_ms"]
    return {
        "queue_size": args.overload_queue,
        "max_queue_wait_ms": args.overload_max_queue_wait_ms,
        "sustainable_rate": knee["throughput"],
        "sustainable_p95_ms": knee["p95_ms"],
        "target_rate": rate,
        "offered_rate": (len(samples) + run["skipped"]) / run["offered_s"],
        "sent": len(samples),
        "skipped_client_side": run["skipped"],
        "statuses": dict(statuses),
        "admitted_throughput": statuses["200"] / run["wall_s"],
        "retry_after_values": {str(k): v for k, v in retry.items()},
        "with_retry_after": sum(v for k, v in retry.items() if k is not None),
        "unloaded_p95_ms": base_p95,
        **{f"admitted_{k}": v for k, v in admitted.items()},
        "p95_ratio": admitted["p95_ms"] / base_p95 if admitted["p95_ms"] and base_p95 else None,
        "rss_before_mb": rss_before,
        "rss_first_half_peak_mb": first,
        "rss_second_half_peak_mb": second,
        "rss_bounded": second <= 1.05 * first,  # no growth while the overload goes on
        "rss_after_mb": rss_after,
        "vm_hwm_mb": hwm,
    }


def check_deadline(args: argparse.Namespace) -> None:
    """Raise :class:`RunTimeout` once the run is past ``--max-run-s``."""
    if time.monotonic() > args.deadline:
        raise RunTimeout(f"the run passed --max-run-s {args.max_run_s:.0f}")


# -- report ---------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_level(label: str, lv: dict[str, Any]) -> None:
    """One row of the per-level table."""
    errors = " ".join(f"{k}:{v}" for k, v in sorted(lv["errors"].items())) or "0"
    print(
        f"| {label} | {lv['concurrency']} | {lv['requests']} | {lv['throughput']:.1f} | "
        f"{_fmt(lv['p50_ms'])} | {_fmt(lv['p95_ms'])} | {_fmt(lv['p99_ms'])} | {errors} | "
        f"{lv['server_cpu_pct']:.0f} | {lv['loadgen_cpu_pct']:.0f} |",
        flush=True,
    )


LEVEL_HEAD = (
    "| server | concurrency | requests | req/s (200s) | p50 ms | p95 ms | p99 ms | "
    "errors | server CPU % | loadgen CPU % |\n|" + "---|" * 10
)


def summarize(work: Workload, results: dict[str, Any]) -> dict[str, Any]:
    """Per server: sustainable throughput and its ratio to TorchServe and to the naive server."""
    best = {k: sustainable(v["levels"]) for k, v in results.items() if v.get("levels")}
    base = {b: (best.get(b) or {}).get("throughput") for b in ("torchserve", "fastapi")}
    print(f"\n### {work.key}: highest throughput with p95 <= {P95_BUDGET_MS:.0f} ms, no errors")
    print("| server | req/s | at concurrency | p95 ms | x TorchServe | x naive FastAPI | goal |")
    print("|" + "---|" * 7)
    summary = {}
    for key, lv in best.items():
        tput = lv["throughput"] if lv else None
        ratios = {b: (tput / v if tput and v else None) for b, v in base.items()}
        goal = GOALS.get(key) if work.key == "resnet18" else None
        verdict = (
            ""
            if goal is None or ratios["torchserve"] is None
            else (f">= {goal}x: {'met' if ratios['torchserve'] >= goal else 'MISSED'}")
        )
        summary[key] = {
            "best": lv,
            "x_torchserve": ratios["torchserve"],
            "x_fastapi": ratios["fastapi"],
            "goal": goal,
        }
        print(
            f"| {LABELS[key]} | {_fmt(tput)} | {lv['concurrency'] if lv else 'none'} | "
            f"{_fmt(lv['p95_ms'] if lv else None)} | {_fmt(ratios['torchserve'], 2)} | "
            f"{_fmt(ratios['fastapi'], 2)} | {verdict} |"
        )
    return summary


# -- cost (OpenCost's two bases) ------------------------------------------------------------


def requested_memory_gib(deployment: Path = REPO / "deploy" / "base" / "deployment.yaml") -> float:
    """The serving container's memory request in the Deployment, in GiB."""
    import yaml

    spec = yaml.safe_load(deployment.read_text())["spec"]["template"]["spec"]
    text = str(spec["containers"][0]["resources"]["requests"]["memory"])
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1.0, "Ti": 2**10}
    for suffix, gib in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * gib
    return float(text) / 2**30  # bytes


def cost_per_1k(
    level: dict[str, Any], prices: Prices, request_cpus: float, request_gib: float
) -> dict[str, float]:
    """CPU-seconds and dollars per 1,000 answered requests at one measured level, on
    OpenCost's allocation and usage bases (:func:`resnetkit.cost.cost`): the wall time
    1,000 requests take at the level's sustained rate, the server processes' CPU-seconds
    for them, and their resident memory."""
    wall_s = 1000 / level["throughput"]
    cpu_s = 1000 * level["server_cpu_s"] / (level["throughput"] * level["wall_s"])
    c = cost(cpu_s, wall_s, prices, used_gib=level["server_rss_mb"] / 1024,
             request_cpus=request_cpus, request_gib=request_gib)  # fmt: skip
    return {"cpu_s_per_1k": cpu_s, "usd_per_1k_allocation": c.allocation,
            "usd_per_1k_usage": c.usage}  # fmt: skip


def print_costs(
    work: Workload, summary: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The cost per 1,000 requests of every server at its sustainable level."""
    prices, cpus, gib = args.prices, float(len(args.cpus)), requested_memory_gib()
    print(f"\n### {work.key}: cost per 1,000 requests at the sustainable level "
          f"({prices.describe()}; request {cpus:g} CPUs, {gib:g} GiB)")  # fmt: skip
    print("| server | req/s | server CPU-s / 1k | $ / 1k, allocation | $ / 1k, usage |")
    print("|" + "---|" * 5)
    out = {}
    for key, entry in summary.items():
        if (lv := entry["best"]) is None:
            continue
        out[key] = c = cost_per_1k(lv, prices, cpus, gib)
        print(f"| {LABELS[key]} | {lv['throughput']:.1f} | {c['cpu_s_per_1k']:.2f} | "
              f"{c['usd_per_1k_allocation']:.6f} | {c['usd_per_1k_usage']:.6f} |")  # fmt: skip
    return {
        "prices": dataclasses.asdict(prices),
        "request_cpus": cpus,
        "request_gib": gib,
        "servers": out,
    }


#: Issue #25's goal: the server's CPU per request at most this many times the floor's.
FLOOR_GOAL = 1.25


def print_floor(
    work: Workload, summary: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The servers' CPU-seconds per request beside the in-process floor (``cpu_floor.py``:
    decode + preprocess + one batch-1 forward pass, same model file and threads)."""
    from cpu_floor import floor_cpu_s

    files = {"onnx-int8": work.int8, "onnx-fp32": work.fp32}
    print(f"\n### {work.key}: server CPU per request against the in-process floor "
          f"({args.server_threads} threads; goal <= {FLOOR_GOAL}x)")  # fmt: skip
    print("| server | server CPU-ms / request | floor CPU-ms / request | x floor | goal |")
    print("|" + "---|" * 5)
    out: dict[str, Any] = {}
    for key, path in files.items():
        lv = (summary.get(key) or {}).get("best")
        if lv is None:
            continue
        server_s = lv["server_cpu_s"] / (lv["throughput"] * lv["wall_s"])
        floor = floor_cpu_s(path, work.bodies[:16], work.content_type, args.server_threads)
        ratio = server_s / floor["cpu_s_per_request"]
        out[key] = {"server_cpu_s": server_s, "floor": floor, "x_floor": ratio}
        print(f"| {LABELS[key]} | {1000 * server_s:.2f} | "
              f"{1000 * floor['cpu_s_per_request']:.2f} | {ratio:.2f} | "
              f"{_verdict(ratio <= FLOOR_GOAL)} |")  # fmt: skip
    return out


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "MISSED"


def print_overload(o: dict[str, Any]) -> None:
    """The overload test, with its goals."""
    n503, with_retry = o["statuses"].get("503", 0), o["with_retry_after"]
    first, second = o["rss_first_half_peak_mb"], o["rss_second_half_peak_mb"]
    ratio = o["p95_ratio"]
    print(
        f"\n### overload: resnetkit onnx int8, --queue-size {o['queue_size']}, "
        f"--max-queue-wait-ms {o['max_queue_wait_ms'] or 'off'}, open loop at "
        f"{o['target_rate']:.0f} req/s = {o['target_rate'] / o['sustainable_rate']:.1f}x the "
        f"sustainable {o['sustainable_rate']:.0f} req/s (offered {o['offered_rate']:.0f})"
    )
    values = ", ".join(f"{k} s: {v}" for k, v in sorted(o["retry_after_values"].items()))
    rows = [
        ("requests sent (skipped client-side)", f"{o['sent']} ({o['skipped_client_side']})", ""),
        ("statuses", " ".join(f"{k}:{v}" for k, v in sorted(o["statuses"].items())), ""),
        ("503 with Retry-After", f"{with_retry} of {n503} ({values})",
         _verdict(n503 > 0 and with_retry == n503)),
        ("admitted throughput req/s", f"{o['admitted_throughput']:.1f}", ""),
        ("RSS MB: before, peak 1st half, peak 2nd half, after",
         f"{o['rss_before_mb']:.0f}, {first:.0f}, {second:.0f}, {o['rss_after_mb']:.0f}",
         f"bounded (2nd half <= 1st + 5%): {_verdict(o['rss_bounded'])}"),
        ("p95 ms: unloaded (1 client), at the knee (sweep)",
         f"{_fmt(o['unloaded_p95_ms'])}, {_fmt(o['sustainable_p95_ms'])}", ""),
        ("p50 / p95 / p99 ms of admitted (200)",
         f"{_fmt(o['admitted_p50_ms'])} / {_fmt(o['admitted_p95_ms'])} / "
         f"{_fmt(o['admitted_p99_ms'])}",
         f"p95 <= 2x unloaded: {_fmt(ratio, 2)}x {_verdict(ratio is not None and ratio <= 2)}"),
    ]  # fmt: skip
    print("| measure | value | goal |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _goal(text: str, value: Any, met: bool) -> dict[str, Any]:
    return {"goal": text, "value": value, "met": met}


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal of the brief with its measured value: reported, never asserted."""
    out = []
    summary = report["models"].get("resnet18", {}).get("summary", {})
    for key, goal in GOALS.items():
        r = summary.get(key, {}).get("x_torchserve")
        text = f"{LABELS[key]}: sustainable req/s >= {goal}x TorchServe's (resnet18)"
        out.append(_goal(text, r, None if r is None else r >= goal))
    if "agreement" in report:
        a = report["agreement"]["agreement"]
        out.append(_goal("int8/fp32 top-1 agreement >= 99% (Fashion-MNIST test)", a, a >= 0.99))
    if "overload" in report:
        o = report["overload"]
        n503, retry = o["statuses"].get("503", 0), o["with_retry_after"]
        first, second = o["rss_first_half_peak_mb"], o["rss_second_half_peak_mb"]
        r = o["p95_ratio"]
        out += [
            _goal("overload: 503s, each with Retry-After", f"{retry}/{n503}", 0 < n503 == retry),
            _goal("overload: RSS bounded (2nd-half peak <= 1st-half peak + 5%)",
                  f"{first:.0f} -> {second:.0f} MB", o["rss_bounded"]),
            _goal("overload: admitted p95 <= 2x unloaded p95", r, r is not None and r <= 2),
        ]  # fmt: skip
    print("\n### goals (reported, not asserted)\n| goal | measured | |\n|---|---|---|")
    for g in out:
        value = g["value"] if isinstance(g["value"], str) else _fmt(g["value"], 3)
        print(f"| {g['goal']} | {value} | {_verdict(g['met'])} |")
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput against p95 per server, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in report["models"].values() if m.get("servers")]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for key, res in model["servers"].items():
            pts = [lv for lv in res.get("levels", []) if lv["p95_ms"] is not None]
            if not pts:
                continue
            ax.plot(
                [p["throughput"] for p in pts], [p["p95_ms"] for p in pts], "o-", label=LABELS[key]
            )
            for p in pts:
                ax.annotate(str(p["concurrency"]), (p["throughput"], p["p95_ms"]), fontsize=7)
        ax.axhline(P95_BUDGET_MS, color="grey", linestyle="--", linewidth=1)
        ax.set(
            xlabel="throughput (req/s)",
            ylabel="p95 latency (ms)",
            yscale="log",
            title=model["title"][:70],
        )
        ax.legend(fontsize=8)
    fig.suptitle(f"serve_bench: {report['environment']['cores_note']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the naive baseline server --------------------------------------------------------------


def naive_app(model_dir: Path, threads: int) -> Any:
    """What one writes first: FastAPI, Pillow, one eager forward pass per request.

    The route is ``async`` and runs decode + forward in Starlette's thread pool (as a plain
    ``def`` route would): concurrent requests run concurrent forward passes, nothing batched.
    """
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from starlette.concurrency import run_in_threadpool

    from resnetkit.models import create_model

    torch.set_num_threads(threads)
    card = json.loads((model_dir / "model.json").read_text())
    model = create_model(card["arch"], **card["kwargs"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    spec = card["preprocessing"]
    (h, w), mode = spec["size"], "L" if spec["channels"] == 1 else "RGB"
    mean = torch.tensor(spec["mean"]).view(-1, 1, 1)
    std = torch.tensor(spec["std"]).view(-1, 1, 1)

    def predict(data: bytes) -> list[dict[str, float]]:
        image = Image.open(io.BytesIO(data)).convert(mode).resize((w, h), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).reshape(h, w, -1)
        x = (x.permute(2, 0, 1) - mean) / std
        with torch.inference_mode():
            probs = torch.softmax(model(x[None]), dim=1)[0]
        top = probs.topk(min(5, len(probs)))
        return [
            {"index": int(i), "probability": float(p)}
            for p, i in zip(top.values, top.indices, strict=True)
        ]

    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/predict")
    async def route(request: Request) -> dict[str, Any]:
        return {"predictions": await run_in_threadpool(predict, await request.body())}

    return app


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags, checked before any work starts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "serve-bench",
        help="results.json, serve_bench.png, work/ (models, server logs)",
    )
    p.add_argument("--quick", action="store_true", help="levels 1,8,32, few requests")
    p.add_argument("--levels", help="concurrency levels (default 1,2,4,8,16,32,64)")
    p.add_argument("--requests", type=int, help="requests per level (at least 10 per client)")
    p.add_argument("--level-max-s", type=float, help="seconds per level at most")
    p.add_argument("--servers", default=",".join(SERVERS), help="subset of " + ",".join(SERVERS))
    p.add_argument("--models", default="resnet18,fashion", help="resnet18, fashion")
    p.add_argument("--run", type=Path, help="trained Fashion-MNIST run (default: train one)")
    p.add_argument("--cpus", help="cores for servers and load generator (default: first two)")
    p.add_argument("--server-threads", type=int, help="inference threads (default: one per core)")
    p.add_argument("--seed", type=int, default=0, help="the resnet18's random weights")
    p.add_argument("--torchserve-venv", type=Path, default=DEFAULT_TS_VENV)
    p.add_argument("--torchserve-workers", type=int, default=1)
    p.add_argument("--torchserve-omp-wait-policy", default="PASSIVE", help="'' for the default")
    p.add_argument("--overload-factor", type=float, default=3.0)
    p.add_argument("--overload-queue", type=int, default=32, help="resnetkit --queue-size")
    p.add_argument(
        "--overload-max-queue-wait-ms",
        type=float,
        default=25.0,
        help="resnetkit --max-queue-wait-ms in the overload test (0: off)",
    )
    p.add_argument("--overload-s", type=float, help="seconds of overload traffic")
    p.add_argument("--overload-inflight", type=int, default=256, help="client's cap")
    p.add_argument("--warmup-s", type=float, help="load before the levels (JIT, arenas)")
    p.add_argument("--request-timeout-s", type=float, default=30.0)
    p.add_argument("--stop-p95-ms", type=float, default=1500.0, help="skip levels past this")
    p.add_argument("--max-run-s", type=float, help="bound on the whole run")
    p.add_argument("--prices", type=Path, default=DEFAULT_PRICES,
                   help="price file for the cost per 1,000 requests")  # fmt: skip
    p.add_argument("--naive-server", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.naive_server:
        return args
    q = args.quick
    available = sorted(os.sched_getaffinity(0))
    try:
        args.levels = [int(c) for c in (args.levels or ("1,8,32" if q else "1,2,4,8,16,32,64"))
                       .split(",")]  # fmt: skip
        args.cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else available[:2]
    except ValueError as exc:
        p.error(f"--levels and --cpus take comma-separated integers: {exc}")
    args.requests = args.requests or (40 if q else 300)
    args.level_max_s = args.level_max_s or (10.0 if q else 60.0)
    args.overload_s = args.overload_s or (4.0 if q else 15.0)
    args.max_run_s = args.max_run_s or (1200.0 if q else 7200.0)
    args.warmup_s = args.warmup_s or (3.0 if q else 10.0)
    args.per_client = 4 if q else 10  # requests per client at least, at high concurrency
    args.servers = [s for s in args.servers.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
    bad = [s for s in args.servers if s not in SERVERS] + [
        m for m in args.models if m not in ("resnet18", "fashion")
    ]
    if bad or min(args.levels) < 1 or args.requests < 1 or args.overload_queue < 32:
        p.error(f"bad --servers/--models {bad}, --levels, --requests or --overload-queue (>= 32)")
    if args.run is not None and not (args.run / "model.json").is_file():
        p.error(f"--run {args.run}: no model.json; pass a trained run directory")
    if not set(args.cpus) <= set(available):
        p.error(f"--cpus {args.cpus}: this process may use {available}")
    args.server_threads = args.server_threads or len(args.cpus)
    try:
        args.prices = load_prices(args.prices)
    except ConfigError as exc:
        p.error(f"--prices: {exc}")
    return args


def bench_model(
    work: Workload, args: argparse.Namespace, dirs: Path, entry: dict[str, Any]
) -> None:
    """Every server in turn on one model, filling ``entry`` as it goes (a run stopped by its
    time limit keeps what it measured); the per-level table, then the summary."""
    threads = args.server_threads
    print(f"\n## {work.title}")
    for note in work.notes:
        print(f"note: {note}")
    print(LEVEL_HEAD)
    entry.update(title=work.title, notes=work.notes, servers={})
    results: dict[str, Any] = entry["servers"]
    for key in args.servers:
        check_deadline(args)
        try:
            if key == "torchserve":
                if shutil.which("java") is None:
                    raise RuntimeError("java is not on PATH (TorchServe needs Java 17)")
                ensure_torchserve_venv(args.torchserve_venv, dirs / "logs" / "venv.log")
                cfg = TorchServeSettings(
                    workers=args.torchserve_workers,
                    threads=threads,
                    omp_wait_policy=args.torchserve_omp_wait_policy,
                )
                server = torchserve_server(work, args.torchserve_venv, dirs, cfg)
            elif key == "fastapi":
                server = fastapi_server(work, dirs, threads)
            else:
                server = resnetkit_server(key, work, dirs, threads)
            with serving(server, work):
                if key == "torchserve":
                    server.info["described"] = describe_torchserve(server, work.key)
                results[key] = {"levels": [], "config": server.info}
                sweep(server, work, args, results[key]["levels"])
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            print(f"| {LABELS[key]} | failed: {exc} |", flush=True)
            results[key] = {"error": str(exc)}
    entry["summary"] = summarize(work, results)
    entry["cost"] = print_costs(work, entry["summary"], args)
    entry["cpu_floor"] = print_floor(work, entry["summary"], args)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime
    import torch
    from machine import machine

    return {
        "machine": machine("float32 and int8 ONNX (each table says which)"),
        "cpus": args.cpus,
        "machine_cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "httpx": httpx.__version__,
        "cores_note": f"servers and the load generator share cores {args.cpus}; "
        f"each server runs {args.server_threads} inference threads",
    }


def run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Build the models, benchmark every server on each, then the agreement and overload."""
    from machine import describe

    print(describe(report["environment"]["machine"]), flush=True)
    dirs = args.out / "work"
    (dirs / "logs").mkdir(parents=True, exist_ok=True)
    print(
        f"serve_bench: {report['environment']['cores_note']} (the load generator's CPU is "
        f"in the tables); load average {os.getloadavg()}",
        flush=True,
    )
    load = os.getloadavg()[0]
    if load > 0.5 * len(args.cpus):
        report["warning"] = f"load average {load:.1f} on {len(args.cpus)} cores before the run"
        print(
            f"WARNING: {report['warning']}: other processes compete for the cores (torch's "
            "intra-op threads then stall at every barrier); measure on a quiet machine"
        )
    works = []
    if "resnet18" in args.models:
        works.append(build_resnet18(dirs, args.seed, calib_images=16))
    if "fashion" in args.models:
        if args.run is None and args.quick:
            print("note: --quick without --run skips the Fashion-MNIST model and the agreement")
        else:
            run_dir = args.run or train_fashion(dirs, dirs / "logs" / "fashion-build.log")
            works.append(build_fashion(run_dir, dirs, dirs / "logs" / "fashion-build.log"))
    for work in works:
        bench_model(work, args, dirs, report["models"].setdefault(work.key, {}))
    fashion = next((w for w in works if w.key == "fashion"), None)
    if fashion is not None:
        check_deadline(args)
        agree = int8_agreement(fashion, args.server_threads)
        report["agreement"] = agree
        print(
            f"\n### int8 vs fp32 (ONNX files) on {agree['images']} Fashion-MNIST test images: "
            f"top-1 agreement {agree['agreement']:.2%} (goal >= 99%: "
            f"{'met' if agree['agreement'] >= 0.99 else 'MISSED'}); top-1 fp32 "
            f"{agree['fp32_top1']:.2%}, int8 {agree['int8_top1']:.2%}"
        )
    if works and works[0].key == "resnet18" and "onnx-int8" in args.servers:
        levels = report["models"]["resnet18"]["servers"].get("onnx-int8", {}).get("levels", [])
        best = sustainable(levels) or max(levels, key=lambda lv: lv["throughput"], default=None)
        if best is not None:
            check_deadline(args)
            report["overload"] = overload(works[0], dirs, best, args, args.server_threads)
            print_overload(report["overload"])


def main() -> None:
    """Run the benchmark; servers are stopped on every way out."""
    args = parse_args()
    if args.naive_server:
        import uvicorn

        uvicorn.run(
            naive_app(args.naive_server, args.threads),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            access_log=False,
        )
        return
    os.sched_setaffinity(0, args.cpus)  # inherited by every server and worker started below
    args.deadline = time.monotonic() + args.max_run_s

    def _stop(signum: int, _frame: Any) -> None:
        raise RunTimeout("run time limit") if signum == signal.SIGALRM else SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGALRM, _stop)
    signal.alarm(int(args.max_run_s) + 60)  # a last resort past the checks between levels
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "environment": environment(args),
        "models": {},
        "args": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("deadline", "naive_server", "port", "threads")
        },
    }
    try:
        run(args, report)
    except RunTimeout as exc:
        report["incomplete"] = str(exc)
        print(f"\nstopped early: {exc}; results.json keeps what was measured", flush=True)
    finally:
        signal.alarm(0)
        for server in list(RUNNING):
            server.stop()
    report["environment"]["load_average_after"] = os.getloadavg()
    report["goals"] = goals(report)
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, args.out / "serve_bench.png")
    print(
        f"\nwrote {args.out / 'results.json'} and {args.out / 'serve_bench.png'}; "
        f"load average after {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
