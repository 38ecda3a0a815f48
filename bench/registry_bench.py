"""Time to register and to load (with sha256 verification) a resnet50-sized version.

Ours beside a baseline on the same files, median of 5, on a SQLite registry in a temp dir:

- register: ``RegistryStore.register`` of a run directory vs. ``shutil.copyfile`` of its weights
- load: ``RegistryStore.load`` (reads and verifies every artifact) vs. a plain read of the weights

Run: ``.venv/bin/python bench/registry_bench.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import describe, machine
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from resnetkit.registry import open_registry


def _resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision resnet50 parameter shapes, for when the model zoo is not importable."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    shapes.update({f"bn1.{k}": (64,) for k in ("weight", "bias", "running_mean", "running_var")})
    in_ch = 64
    for stage, (blocks, width) in enumerate(
        zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1
    ):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            convs = {"conv1": (width, in_ch, 1, 1), "conv2": (width, width, 3, 3)}
            convs["conv3"] = (width * 4, width, 1, 1)
            if b == 0:
                convs["downsample.0"] = (width * 4, in_ch, 1, 1)
            for name, shape in convs.items():
                shapes[f"{p}.{name}.weight"] = shape
                bn = f"{p}.{name.replace('conv', 'bn').replace('downsample.0', 'downsample.1')}"
                for k in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{bn}.{k}"] = (shape[0],)
            in_ch = width * 4
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def resnet50_state() -> tuple[dict[str, torch.Tensor], str]:
    """The resnet50 state dict from the zoo if available, else random tensors of its shapes."""
    try:
        from resnetkit import create_model

        model = create_model("resnet50")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        return state, "zoo resnet50"
    except Exception:  # any failure (zoo missing or broken) means: use the shape table
        gen = torch.Generator().manual_seed(0)
        state = {k: torch.randn(s, generator=gen) for k, s in _resnet50_shapes().items()}
        return state, "generated resnet50 shapes"


def make_run(folder: Path, state: dict[str, torch.Tensor], salt: int) -> Path:
    """A run directory whose weights differ from the others' (so nothing is deduplicated)."""
    folder.mkdir(parents=True)
    state = dict(state)
    state["fc.bias"] = state["fc.bias"].clone()
    state["fc.bias"][0] = float(salt)
    save_file(state, str(folder / "model.safetensors"))
    meta = {"arch": "resnet50", "kwargs": {"num_classes": 1000}, "labels": [], "preprocessing": {}}
    (folder / "model.json").write_text(json.dumps(meta))
    (folder / "summary.json").write_text(json.dumps({"test_accuracy": 0.76}))
    return folder


def median_s(func: Callable[[int], object], repeats: int) -> float:
    """Median wall time of ``func(i)`` over ``repeats`` runs, after one warm-up."""
    func(-1)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        func(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(describe(machine()), flush=True)
    state, origin = resnet50_state()
    with tempfile.TemporaryDirectory(prefix="resnetkit-bench-") as tmp:
        root = Path(tmp)
        runs = {i: make_run(root / f"run{i}", state, i) for i in range(-1, args.repeats)}
        size_mb = (runs[0] / "model.safetensors").stat().st_size / 1e6
        with open_registry(f"sqlite:///{root / 'registry.db'}") as store:
            register = median_s(lambda i: store.register(runs[i], "resnet50"), args.repeats)
            copy = median_s(
                lambda i: shutil.copyfile(runs[i] / "model.safetensors", root / f"copy{i}"),
                args.repeats,
            )
            load = median_s(lambda i: store.load(f"resnet50:{i % args.repeats + 1}"), args.repeats)
            read = median_s(lambda i: (runs[i] / "model.safetensors").read_bytes(), args.repeats)
    table = Table(
        title=f"registry, SQLite, {origin}: {size_mb:.1f} MB weights, median of {args.repeats}"
    )
    for col in ("operation", "ours (ms)", "baseline", "baseline (ms)", "ratio", "ours MB/s"):
        table.add_column(col, justify="left" if col in ("operation", "baseline") else "right")
    for name, ours, base_name, base in (
        ("register", register, "copy weights", copy),
        ("load + verify", load, "read weights", read),
    ):
        table.add_row(
            name,
            f"{ours * 1e3:.1f}",
            base_name,
            f"{base * 1e3:.1f}",
            f"{ours / base:.2f}x",
            f"{size_mb / ours:.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
