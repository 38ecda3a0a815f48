"""Cold start of ``resnetkit serve``: exec to the first answered request, beside the floor.

For each model, ``--repeats`` times (median reported): start ``resnetkit serve INT8.onnx`` and
post a real image to ``/v1/predict`` every few milliseconds from the moment of ``exec`` until
one is answered 200. Printed beside:

* the import floor, ``python -c "import onnxruntime, numpy, PIL"`` (what any Python ONNX
  server pays before it can do anything), measured the same way;
* TorchServe 0.12 on the same model (``--torchserve``; its own virtual environment, as in
  ``serve_bench.py``), exec to its first answered prediction.

Also, after the first answer: the server's RSS, whether libtorch is mapped into it
(``/proc/PID/maps``), and the cold start split the server logs (imports, model load, warm-up).

    .venv/bin/python bench/cold_start.py --out runs/cold-start --run RUN_DIR
    .venv/bin/python bench/cold_start.py --out runs/cold-start --run RUN_DIR --torchserve

Models: the quickstart's Fashion-MNIST run (``--run``; int8 made with ``resnetkit quantize``)
and resnet18 int8 at 224x224 (seeded random weights), both built as ``serve_bench.py`` does.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import serve_bench as sb  # noqa: E402  (a sibling script, not a package)
from machine import describe, machine  # noqa: E402

GOALS_S = {"fashion": 0.5, "resnet18": 1.0}
POLL_S = 0.005
START_TIMEOUT_S = 120.0


def _first_answer(
    cmd: list[str], env: dict[str, str] | None, url: str, body: bytes, content_type: str, log: Path
) -> tuple[float, subprocess.Popen[bytes]]:
    """Seconds from ``exec`` of ``cmd`` to the first 200 from ``url``; the process (running)."""
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    deadline = start + START_TIMEOUT_S
    with httpx.Client(timeout=5, trust_env=False) as client:
        while time.perf_counter() < deadline:
            try:
                answer = client.post(url, content=body, headers={"content-type": content_type})
                if answer.status_code == 200:
                    return time.perf_counter() - start, proc
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}); see {log}")
            time.sleep(POLL_S)
    proc.kill()
    raise RuntimeError(f"no answer in {START_TIMEOUT_S:.0f} s; see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def import_floor(repeats: int) -> float:
    """Median wall time of a Python that imports onnxruntime, numpy and Pillow, then exits."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import onnxruntime, numpy, PIL.Image"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_mapped(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _logged_split(log: Path) -> dict[str, float]:
    """The server's own cold-start split from its log line, e.g. ``imports 0.21 s``."""
    text = log.read_text(errors="replace")
    return {k: float(v) for k, v in re.findall(r"(imports|load|warm-up) ([0-9.]+) s", text)}


def resnetkit_cold(work: sb.Workload, dirs: Path, repeats: int, threads: int) -> dict[str, Any]:
    """Cold starts of ``resnetkit serve`` on the int8 file, and the process's state after."""
    runs = []
    for i in range(repeats):
        server = sb.resnetkit_server("onnx-int8", work, dirs, threads)
        log = dirs / "logs" / f"{work.key}-cold-{i}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        seconds, proc = _first_answer(
            server.cmd, server.env, server.predict_url, work.bodies[0], work.content_type, log
        )
        runs.append(
            {
                "seconds": seconds,
                "rss_mb": sb.rss_mb(proc.pid),
                "torch_mapped": _torch_mapped(proc.pid),
            }
        )
        _stop(proc)
        runs[-1]["split_s"] = _logged_split(log)
    return {
        "median_s": statistics.median(r["seconds"] for r in runs),
        "rss_mb": statistics.median(r["rss_mb"] for r in runs),
        "torch_mapped": any(r["torch_mapped"] for r in runs),
        "runs": runs,
    }


def torchserve_cold(work: sb.Workload, dirs: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Cold starts of TorchServe on the same model, exec to its first answered prediction."""
    if shutil.which("java") is None:
        return {"error": "java is not on PATH (TorchServe needs Java 17)"}
    sb.ensure_torchserve_venv(args.torchserve_venv, dirs / "logs" / "venv.log")
    cfg = sb.TorchServeSettings(threads=args.threads)
    runs = []
    for i in range(args.repeats):
        server = sb.torchserve_server(work, args.torchserve_venv, dirs, cfg)
        log = dirs / "logs" / f"{work.key}-torchserve-cold-{i}.log"
        try:
            seconds, proc = _first_answer(
                server.cmd, server.env, server.predict_url, work.bodies[0], work.content_type, log
            )
            server.proc = proc
            runs.append({"seconds": seconds, "rss_mb": sb.rss_mb(proc.pid)})
        finally:
            server.stop()
    return {"median_s": statistics.median(r["seconds"] for r in runs), "runs": runs}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for models, logs, results")
    p.add_argument("--run", type=Path, help="a Fashion-MNIST run (default: train one epoch)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="the server's inference threads")
    p.add_argument("--models", default="fashion,resnet18", help="fashion, resnet18 or both")
    p.add_argument("--torchserve", action="store_true", help="also measure TorchServe 0.12")
    p.add_argument("--torchserve-venv", type=Path, default=sb.DEFAULT_TS_VENV)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    info = machine()
    print(describe(info), flush=True)
    dirs = args.out / "work"
    (dirs / "logs").mkdir(parents=True, exist_ok=True)
    floor = import_floor(args.repeats)
    print(f"import floor (python -c 'import onnxruntime, numpy, PIL'): {floor:.3f} s")
    report: dict[str, Any] = {"machine": info, "import_floor_s": floor, "models": {}}
    print("\n| model | resnetkit serve, exec to first answer (median) | x floor | goal | "
          "RSS after | torch mapped | TorchServe | ours / TorchServe |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for key in args.models.split(","):
        if key == "fashion":
            run = args.run or sb.train_fashion(dirs, dirs / "logs" / "train.log")
            work = sb.build_fashion(run, dirs, dirs / "logs" / "build.log")
        else:
            work = sb.build_resnet18(dirs, seed=0, calib_images=8)
        ours = resnetkit_cold(work, dirs, args.repeats, args.threads)
        ts = torchserve_cold(work, dirs, args) if args.torchserve else {}
        report["models"][key] = {"resnetkit": ours, "torchserve": ts}
        goal = GOALS_S[key]
        met = "met" if ours["median_s"] <= goal else "MISSED"
        ts_s = ts.get("median_s")
        ts_text = f"{ts_s:.2f} s" if ts_s else ts.get("error", "not run")
        ratio = f"{ours['median_s'] / ts_s:.2f}x" if ts_s else "-"
        print(
            f"| {work.key} int8 | {ours['median_s']:.3f} s | {ours['median_s'] / floor:.1f}x | "
            f"<= {goal} s: {met} | {ours['rss_mb']:.0f} MB | "
            f"{'yes' if ours['torch_mapped'] else 'no'} | {ts_text} | {ratio} |",
            flush=True,
        )
        split = ours["runs"][-1].get("split_s")
        if split:
            print(f"  server's split (last run): {split}")
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
