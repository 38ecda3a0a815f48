"""``resnetkit explain --model REF IMAGE [IMAGE ...] -o DIR``: where the model looked.

For each image: the Grad-CAM (or Grad-CAM++) heat map of the predicted class, or of
``--class``, blended over the image as ``DIR/<image name>-gradcam.png``, and the top-5 printed.
Images that share a name (``shirt.png d2/shirt.png``) get ``shirt-gradcam.png`` and
``shirt-2-gradcam.png``, numbered in command-line order, so no overlay replaces another.
Explanations run on the version's torch weights, whatever backend serves it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from resnetkit.cli.common import add_registry_flag, print_json
from resnetkit.data import open_image, preprocess_image
from resnetkit.errors import ConfigError
from resnetkit.export import LoadedModel, load_model_ref
from resnetkit.fileio import check_output_dir
from resnetkit.models import ClassifierModel


def add_parser(subparsers: Any) -> None:
    """Register ``explain``."""
    p = subparsers.add_parser(
        "explain",
        help="Grad-CAM heat maps of a model's decision, blended over the images",
        description="Explain a model's predictions with Grad-CAM: one overlay PNG per image.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", type=Path, help="image files")
    p.add_argument("--model", required=True, metavar="REF", help="run dir or name@alias")
    add_registry_flag(p)
    p.add_argument("--class", dest="target", help="class to explain: index or label (default: top)")
    p.add_argument("--stage", help="stage to explain, e.g. layer3 (default: the last)")
    p.add_argument("--method", choices=("gradcam", "gradcam++"), default="gradcam")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the overlays")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_explain)


def _target(loaded: LoadedModel, text: str | None) -> int | None:
    if text is None:
        return None
    classes = loaded.card.num_classes or len(loaded.labels)
    if text.isdigit() and int(text) < classes:
        return int(text)
    if text in loaded.labels:
        return loaded.labels.index(text)
    raise ConfigError(
        f"--class {text!r} is neither a class index below {classes} nor one of {loaded.labels}"
    )


def overlay_paths(images: list[Path], out: Path, method: str) -> list[Path]:
    """One overlay path per image, all different: a repeated stem gets ``-2``, ``-3``, ...

    Deterministic (command-line order), so the same command writes the same files.
    """
    suffix = f"-{method.replace('+', 'p')}.png"
    taken: set[str] = set()
    paths = []
    for image in images:
        name, n = f"{image.stem}{suffix}", 1
        while name in taken:
            n += 1
            name = f"{image.stem}-{n}{suffix}"
        taken.add(name)
        paths.append(out / name)
    return paths


def run_explain(args: argparse.Namespace) -> int:
    """Explain each image; write its overlay; print its top-5."""
    from resnetkit.monitor.explain import explain, save_overlay, stage_names

    check_output_dir(args.out, what="-o")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise ConfigError(f"no such image file: {', '.join(missing)}")
    loaded = load_model_ref(args.model, registry=args.registry)
    target = _target(loaded, args.target)
    model = loaded.module()
    if not isinstance(model, ClassifierModel):
        raise ConfigError(f"{loaded.identity.label} is not a zoo model; Grad-CAM needs one")
    if args.stage is not None and args.stage not in stage_names(model):
        raise ConfigError(f"--stage {args.stage!r}: use one of {', '.join(stage_names(model))}")
    spec, rows, report = loaded.spec, [], []
    for path, out in zip(
        args.images, overlay_paths(args.images, args.out, args.method), strict=True
    ):
        photo = open_image(path)
        x = torch.from_numpy(preprocess_image(photo, spec)[None])
        result = explain(model, x, target_class=target, stage=args.stage, method=args.method)
        save_overlay(out, np.asarray(photo.convert("RGB")), result.maps[0].cpu().numpy())
        top = [(loaded.labels[i] if loaded.labels else str(i), p) for i, p in result.topk(5)[0]]
        rows.append((path.name, top, out))
        report.append(
            {
                "image": str(path),
                "overlay": str(out),
                "stage": result.stage,
                "explained_class": int(result.target_classes[0]),
                "top5": [{"label": label, "probability": p} for label, p in top],
            }
        )
    if args.json:
        print_json(report)
        return 0
    table = Table(title=f"{loaded.identity.label}: {args.method} at {report[0]['stage']}")
    for col in ("image", "top-5", "overlay"):
        table.add_column(col)
    for name, top, out in rows:
        table.add_row(name, ", ".join(f"{label} {p:.1%}" for label, p in top), str(out))
    Console().print(table)
    return 0
