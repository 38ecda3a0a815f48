"""The README's main job (``make quickstart``): from data to a served model, step by step.

1. train the fast Fashion-MNIST recipe (``FULL=1``: the 10-minute recipe for this machine);
2. evaluate it on the test set (accuracy, confusion matrix);
3. register it and point ``production`` at it;
4. export it to ONNX (parity-checked) and quantize it to int8 (accuracy-checked), registering
   the int8 model as a version of its own;
5. serve ``production`` in the foreground and print the dashboard's address, a ``curl`` and
   how to stop; with ``SERVE=0``, send one real request instead and stop.

Re-running is safe: a trained run is reused (a killed one resumes), weights already in the
registry are not registered again, and nothing already there is changed but the alias.
Settings from the environment: ``FULL=1``, ``SERVE=0``, ``PORT`` (8000), ``RUN_DIR``,
``RECIPE`` (another recipe file), ``RESNETKIT_REGISTRY``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image
from rich.console import Console

from resnetkit.compress import quantize_with_budget
from resnetkit.config import TrainConfig, from_dict, load_toml
from resnetkit.contract import MODEL_WEIGHTS, read_summary
from resnetkit.data import load_dataset
from resnetkit.errors import ResNetKitError
from resnetkit.evaluate import resolve_device, resolve_precision
from resnetkit.export import check_loadable, check_parity, export_onnx, load_model_ref
from resnetkit.onnxio import card_metadata
from resnetkit.registry import RegistrationOptions, RegistryStore, open_registry
from resnetkit.registry.artifacts import sha256_file
from resnetkit.train import evaluate_run, train
from resnetkit.train.rundir import has_checkpoint

NAME = "fashion-mnist"
ROOT = Path(__file__).resolve().parents[1]
console = Console()


def step(number: int, text: str) -> None:
    console.rule(f"[bold]{number}/6  {text}")


def train_step(run: Path, recipe: Path) -> TrainConfig:
    step(1, "install: done by make (.venv, PyTorch 2.13.0 CPU, resnetkit)")
    step(2, f"train ({recipe.name})")
    cfg = from_dict(TrainConfig, load_toml(recipe))
    if (run / MODEL_WEIGHTS).is_file():
        console.print(f"reusing the trained model in {run} (delete the folder to retrain)")
        return cfg
    resume = has_checkpoint(run)
    console.print(("resuming the killed run" if resume else "training") + f" in {run}")
    result = train(cfg, run, resume=resume)
    console.print(
        f"trained {result.epochs_run} epochs at {result.steady_images_per_s:,.0f} img/s; "
        f"weights in {run / MODEL_WEIGHTS}"
    )
    return cfg


def evaluate_step(run: Path, cfg: TrainConfig) -> None:
    step(3, "evaluate on the test set")
    summary = read_summary(run)
    if "test_accuracy" not in summary or not (run / "eval.json").is_file():
        summary = evaluate_run(run, cfg)
    console.print(
        f"test accuracy {summary['test_accuracy']:.2%}; wrote {run / 'eval.json'} and "
        f"{run / 'plots' / 'confusion_matrix.png'}"
    )


def registered_version(store: RegistryStore, name: str, path: Path, filename: str) -> int | None:
    """The version of ``name`` already holding this exact file, if any."""
    if name not in {m.name for m in store.list_models()}:
        return None
    digest = sha256_file(path)
    for info in store.list_versions(name):
        if any(a.filename == filename and a.digest == digest for a in info.artifacts):
            return info.version
    return None


def register_step(store: RegistryStore, run: Path) -> int:
    step(4, "register and point production at it")
    version = registered_version(store, NAME, run / MODEL_WEIGHTS, MODEL_WEIGHTS)
    if version is None:
        info = store.register(
            run, NAME, RegistrationOptions(description="make quickstart"), check=check_loadable
        )
        version = info.version
        console.print(f"registered {NAME}:{version} in {store.url}")
    else:
        console.print(f"{NAME}:{version} already holds these weights")
    moved = store.set_alias(NAME, "production", version, reason="make quickstart")
    where = "now points" if moved else "already points"
    console.print(f"{NAME}@production {where} at version {version}")
    return version


def export_step(store: RegistryStore, run: Path) -> None:
    step(5, "export to ONNX and int8, and register the int8 model")
    loaded = load_model_ref(run)
    test = loaded.dataset("test")
    fp32, int8 = run / "model.onnx", run / "model-int8.onnx"
    if not fp32.is_file():
        export_onnx(loaded.module(), fp32, input_size=loaded.input_size,
                    metadata=card_metadata(loaded.card))  # fmt: skip
    parity = check_parity(loaded.module(), fp32, loaded.normalized(test.images[:256]))
    console.print(f"{fp32}: {parity.summary()}")
    if not int8.is_file():
        report = quantize_with_budget(
            fp32, int8, loaded.calibration_images(512), test.images, test.labels, loaded.spec
        )
        verdict = "accepted" if report.accepted else "REJECTED"
        console.print(
            f"{int8}: top-1 {report.fp32_top1:.2%} -> {report.int8_top1:.2%} "
            f"({report.drop_points:+.2f} points, budget {report.budget_points:g}): {verdict}; "
            f"{report.fp32_size_bytes / 1e6:.2f} MB -> {report.int8_size_bytes / 1e6:.2f} MB"
        )
    version = registered_version(store, NAME, int8, "model.onnx")
    if version is not None:
        console.print(f"the int8 model is {NAME}:{version}")
        return
    options = RegistrationOptions(description="make quickstart: int8", tags={"precision": "int8"})
    try:
        info = store.register(int8, NAME, options, check=check_loadable)
        console.print(f"registered the int8 model as {NAME}:{info.version}")
    except ResNetKitError as exc:
        console.print(f"[yellow]the int8 model is not registered:[/] {exc}")


def smoke_request(url: str) -> None:
    image = load_dataset("fashion-mnist", "test", limit=1).images[0, 0].numpy()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    answer = httpx.post(f"{url}/v1/predict?k=3", files={"file": buf.getvalue()}, timeout=30)
    answer.raise_for_status()
    top = answer.json()["predictions"][0]
    console.print(
        f"smoke request: a test image is [bold]{top['label']}[/] ({top['probability']:.1%}) "
        f"by {NAME}:{answer.json()['version']}"
    )


def serve_step(port: int, foreground: bool) -> int:
    step(6, "serve production")
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("resnetkit")), "serve", f"{NAME}@production",
               "--port", str(port)]  # fmt: skip
    if foreground:
        console.print(f"dashboard: [bold]{url}/[/]")
        console.print(f"try:       curl -s -F file=@image.png '{url}/v1/predict?k=3'")
        console.print("stop:      Ctrl-C (or SIGTERM)")
        os.execv(command[0], command)
    server = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                console.print("[red]the server stopped before it was ready[/]")
                return 1
            time.sleep(0.5)
        smoke_request(url)
    finally:
        server.terminate()
        server.wait(60)
    console.print(f"SERVE=0: stopped. `resnetkit serve {NAME}@production` serves it again.")
    return 0


def full_recipe() -> str:
    """The 10-minute recipe for this machine: the wider network where training runs in bf16 or
    fp16 (a GPU, or a CPU with AVX512-BF16 or AMX: 95.3% in 8 minutes on 2 Zen 4 cores), the
    narrow one where it runs in float32 (95.1% in 9 minutes on 2 AVX2-only cores, where the
    wider one would take about twice as long)."""
    half = resolve_precision("auto", resolve_device("auto")) is not None
    return "fashion_mnist_wide.toml" if half else "fashion_mnist.toml"


def main() -> int:
    full = os.environ.get("FULL", "0") == "1"
    named = full_recipe() if full else "fashion_mnist_fast.toml"
    recipe = Path(os.environ.get("RECIPE") or ROOT / "configs" / named).resolve()
    default_run = "runs/quickstart-full" if full else "runs/quickstart"
    run = Path(os.environ.get("RUN_DIR") or default_run)
    try:
        cfg = train_step(run, recipe)
        evaluate_step(run, cfg)
        with open_registry() as store:
            register_step(store, run)
            export_step(store, run)
        return serve_step(int(os.environ.get("PORT", "8000")), os.environ.get("SERVE", "1") != "0")
    except ResNetKitError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
