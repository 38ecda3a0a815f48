"""Small but real training run directories and ONNX-like files for registry tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from resnetkit.models import create_model

LABELS = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat"]


def make_run_dir(
    path: Path,
    *,
    seed: int = 0,
    accuracy: float = 0.9,
    profile: bool = True,
) -> Path:
    """Write a run directory like training leaves: real resnet20 weights (seeded, untrained),
    model.json, summary, config, metrics and a drift reference."""
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=len(LABELS), in_chans=1)
    save_file(dict(model.state_dict()), str(path / "model.safetensors"))
    width = 64  # the embedding size of resnet20
    model_json = {
        "arch": "resnet20",
        "kwargs": {"num_classes": len(LABELS), "in_chans": 1},
        "labels": LABELS,
        "preprocessing": {"size": [28, 28], "channels": 1, "mean": [0.286], "std": [0.353]},
    }
    if profile:
        model_json["profile"] = {"params": 272474, "macs": 40_812_032}
    (path / "model.json").write_text(json.dumps(model_json))
    summary = {
        "test_accuracy": accuracy,
        "test_loss": 0.31,
        "epochs": 3,
        "dataset_fingerprint": "fmnist-sha256:1f2e3d",
        "run_id": f"run-{seed}",
    }
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.toml").write_text('[model]\narch = "resnet20"\n\n[train]\nepochs = 3\n')
    (path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.4}\n')
    drift = {"embeddings": torch.randn(4, width, generator=gen), "labels": torch.arange(4)}
    save_file(drift, str(path / "drift_reference.safetensors"))
    return path


def make_large_run_dir(path: Path, *, megabytes: int = 8) -> Path:
    """A run directory whose weights span several copy chunks (for kill-during-copy tests)."""
    make_run_dir(path)
    elements = megabytes * (1 << 20) // 4
    save_file(
        {"fc.weight": torch.arange(elements, dtype=torch.float32)}, str(path / "model.safetensors")
    )
    return path


def make_onnx_file(path: Path, metadata: dict[str, object] | None = None) -> Path:
    """A real (one Identity node) ONNX model with ``resnetkit.*`` metadata, as export writes."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "tiny",
        [value("input", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [value("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
    )
    proto = helper.make_model(graph)
    for key, item in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = f"resnetkit.{key}"
        entry.value = item if isinstance(item, str) else json.dumps(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def int8_metadata(*, accepted: bool) -> dict[str, object]:
    """Metadata of a quantized export: model.json's fields plus the quantization verdict."""
    report = {"method": "percentile", "fp32_top1": 0.92, "budget_points": 1.0}
    report |= {"int8_top1": 0.918 if accepted else 0.85, "drop_points": 0.2 if accepted else 7.0}
    return {
        "arch": "resnet20",
        "kwargs": {"num_classes": len(LABELS), "in_chans": 1},
        "labels": LABELS,
        "preprocessing": {"size": [28, 28], "channels": 1, "mean": [0.286], "std": [0.353]},
        "quantization_report": report,
        "quantization_accepted": accepted,
    }
