"""``resnetkit prune``, ``distill`` and ``tradeoff``: smaller models and what they cost.

``prune`` and ``distill`` write a new run directory at ``--out`` (the fine-tuned model, its
``summary.json`` and evaluation), as ``resnetkit train`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from resnetkit.cli.common import add_registry_flag, check_at_least
from resnetkit.compress.distill import distill
from resnetkit.compress.prune import CRITERIA, prune_model
from resnetkit.compress.sparse import magnitude_prune, measure_sparsity, sparse_finetune
from resnetkit.config import OptimConfig, TrainConfig, from_dict, load_toml
from resnetkit.contract import CONFIG_TOML, MODEL_WEIGHTS, ModelCard, write_summary
from resnetkit.errors import ConfigError
from resnetkit.export import LoadedModel, load_model_ref
from resnetkit.export.tradeoff import measure_variant, plot_tradeoff
from resnetkit.fileio import atomic_write, check_output_dir
from resnetkit.models import load_model, profile, save_model
from resnetkit.train import check_config, evaluate_run, train
from resnetkit.train.rundir import has_checkpoint


def add_parser(subparsers: Any) -> None:
    """Register ``prune``, ``distill`` and ``tradeoff``."""
    p = subparsers.add_parser("prune", help="remove filters structurally, then fine-tune")
    p.add_argument("ref", metavar="REF", help="run directory or name@alias")
    p.add_argument(
        "--ratio",
        type=float,
        default=0.5,
        help="share of inner filters to remove (of weights to zero with --unstructured)",
    )
    p.add_argument("--criterion", choices=CRITERIA, help="filter ranking (default: l1)")
    p.add_argument(
        "--unstructured",
        action="store_true",
        help="zero the smallest weights instead: no faster on dense kernels",
    )
    _common(p)
    p.set_defaults(func=run_prune)
    d = subparsers.add_parser("distill", help="train a small student from a teacher's outputs")
    d.add_argument("--teacher", required=True, help="run directory or name@alias")
    d.add_argument("--student", required=True, help="zoo model name, e.g. resnet8")
    d.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term")
    d.add_argument("--temperature", type=float, default=4.0)
    _common(d)
    d.set_defaults(func=run_distill)
    t = subparsers.add_parser("tradeoff", help="accuracy, size and speed of a model's variants")
    t.add_argument("base", metavar="REF", help="the original model (run directory or name@alias)")
    t.add_argument("--int8", help="its int8 ONNX file or version (from `resnetkit quantize`)")
    t.add_argument("--pruned", help="the pruned model (`resnetkit prune`)")
    t.add_argument("--distilled", help="the distilled student (`resnetkit distill`)")
    t.add_argument("--data", help="test data (default: the base model's own)")
    t.add_argument("--test-limit", type=int, help="measure accuracy on the first N test images")
    t.add_argument("--out", required=True, type=Path, help="folder for tradeoff.json and .png")
    add_registry_flag(t)
    t.set_defaults(func=run_tradeoff)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training recipe (default: the source run's config.toml)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, type=Path, help="new run directory")
    add_registry_flag(p)
    p.add_argument("--no-progress", action="store_true")


def _recipe(args: argparse.Namespace, source: LoadedModel) -> TrainConfig:
    path = Path(args.config) if args.config else source.folder / CONFIG_TOML
    if not path.is_file():
        raise ConfigError(f"no training recipe: {path} is missing; pass --config")
    cfg = from_dict(TrainConfig, load_toml(path))
    optim: OptimConfig = cfg.optim
    if args.lr is not None:
        optim = dataclasses.replace(optim, lr=args.lr)
    changes: dict[str, Any] = {"optim": optim, "init_from": None, "freeze": "none"}
    for name in ("epochs", "seed"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.no_progress:
        changes["progress"] = False
    cfg = dataclasses.replace(cfg, **changes)
    check_config(cfg)
    return cfg


def _source(args: argparse.Namespace, ref: str) -> LoadedModel:
    """The model to start from, with --out checked against it before any work."""
    check_output_dir(args.out, what="--out")
    if has_checkpoint(args.out) or (args.out / MODEL_WEIGHTS).exists():
        raise ConfigError(f"--out {args.out} already holds a run; choose a new folder")
    loaded = load_model_ref(ref, registry=args.registry)
    if not loaded.has_weights:
        raise ConfigError(f"{ref} is an ONNX model; start from its run directory or version")
    out, src = args.out.resolve(), loaded.folder.resolve()
    if out == src or src in out.parents:
        raise ConfigError(
            f"--out {args.out} is inside the source run {loaded.folder}; choose a new folder"
        )
    return loaded


@contextlib.contextmanager
def _new_run(out: Path) -> Iterator[None]:
    """Remove ``out`` if this command created it and failed before a checkpoint existed."""
    created = not out.exists()
    try:
        yield
    except BaseException:
        if created and not has_checkpoint(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _accuracy(loaded: LoadedModel) -> float | None:
    value = loaded.metrics.get("test_accuracy")
    return float(value) if isinstance(value, (int, float)) else None


def run_prune(args: argparse.Namespace) -> int:
    """``resnetkit prune REF --ratio R --out DIR``: prune, fine-tune, evaluate."""
    if not 0 <= args.ratio < 1:
        raise ConfigError(f"--ratio must be in [0, 1), got {args.ratio}")
    source = _source(args, args.ref)
    cfg = _recipe(args, source)
    if args.unstructured:
        return _prune_unstructured(args, source, cfg)
    model, card = source.module(), source.card
    criterion = args.criterion or "l1"
    pruned = prune_model(model, card.arch, card.kwargs, args.ratio, criterion)
    with _new_run(args.out):
        init = _save_start(pruned.model, card, pruned.kwargs, args.out)
        model_cfg = dataclasses.replace(cfg.model, arch=card.arch, kwargs=pruned.kwargs)
        cfg = dataclasses.replace(cfg, model=model_cfg, init_from=init)
        train(cfg, args.out)
    summary = evaluate_run(args.out, cfg)
    size = source.input_size
    _report(
        f"pruned {args.ratio:.0%} of inner filters ({criterion})",
        [
            ("original", profile(model, size), _accuracy(source)),
            ("pruned + fine-tuned", profile(pruned.model, size), summary["test_accuracy"]),
        ],
    )
    Console().print(f"wrote the fine-tuned model to {args.out}")
    return 0


def _prune_unstructured(args: argparse.Namespace, source: LoadedModel, cfg: TrainConfig) -> int:
    if args.criterion is not None:
        raise ConfigError("--criterion ranks filters; --unstructured ranks single weights")
    model, card = source.module(), source.card
    original_size = profile(model, source.input_size)
    sparsity = magnitude_prune(model, args.ratio)
    with _new_run(args.out):
        cfg = dataclasses.replace(cfg, init_from=_save_start(model, card, card.kwargs, args.out))
        sparse_finetune(cfg, args.out)
    summary = evaluate_run(args.out, cfg)
    tuned, _ = load_model(args.out)
    kept = measure_sparsity(tuned)
    summary["sparsity"] = kept.ratio
    write_summary(args.out, summary)
    _report(
        f"zeroed {sparsity.ratio:.0%} of conv and linear weights (global magnitude)",
        [
            ("original", original_size, _accuracy(source)),
            ("sparse + fine-tuned", profile(tuned, source.input_size), summary["test_accuracy"]),
        ],
    )
    Console().print(
        f"{kept.zeros:,} of {kept.total:,} weights are zero ({kept.ratio:.1%}). Unstructured "
        "sparsity saves no time on dense kernels: same shapes, same MACs, same latency and "
        "file size. Use structured pruning (without --unstructured) for a faster model."
    )
    return 0


def _save_start(model: nn.Module, card: ModelCard, kwargs: dict[str, Any], out: Path) -> str:
    """Save the pruned model where its fine-tuning starts; return the weights file."""
    init = out / "pruned-init"
    save_model(
        model, init, arch=card.arch, kwargs=kwargs, labels=card.labels,
        preprocessing=card.preprocessing,
    )  # fmt: skip
    return str(init / MODEL_WEIGHTS)


def run_distill(args: argparse.Namespace) -> int:
    """``resnetkit distill --teacher REF --student NAME --out DIR``."""
    check_at_least("--temperature", args.temperature, 0, strict=True)
    if not 0 <= args.alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {args.alpha}")
    source = _source(args, args.teacher)
    cfg = _recipe(args, source)
    teacher, card = source.module(), source.card
    kwargs = {k: v for k, v in card.kwargs.items() if k in ("num_classes", "in_chans")}
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, arch=args.student, kwargs=kwargs)
    )
    with _new_run(args.out):
        distill(cfg, args.out, teacher, alpha=args.alpha, temperature=args.temperature)
    summary = evaluate_run(args.out, cfg)
    student, _ = load_model(args.out)
    size = source.input_size
    _report(
        f"distilled {card.arch} into {args.student} (alpha {args.alpha}, T {args.temperature})",
        [
            ("teacher", profile(teacher, size), _accuracy(source)),
            ("student", profile(student, size), summary["test_accuracy"]),
        ],
    )
    Console().print(f"wrote the student to {args.out}")
    return 0


def _report(title: str, rows: list[tuple[str, Any, float | None]]) -> None:
    table = Table(title=title)
    for col in ("model", "params", "MACs", "test accuracy"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, prof, acc in rows:
        accuracy = "-" if acc is None else f"{100 * acc:.2f}%"
        table.add_row(name, f"{prof.params:,}", f"{prof.macs / 1e6:,.1f}M", accuracy)
    Console().print(table)


def run_tradeoff(args: argparse.Namespace) -> int:
    """``resnetkit tradeoff REF [--int8 ...] [--pruned ...] [--distilled ...] --out DIR``."""
    check_output_dir(args.out, what="--out")
    check_at_least("--test-limit", args.test_limit, 1)
    base = load_model_ref(args.base, registry=args.registry)
    test = base.dataset("test", data=args.data, limit=args.test_limit)
    variants = [("original", args.base), ("int8", args.int8), ("pruned", args.pruned)]
    variants.append(("distilled", args.distilled))
    rows = [
        measure_variant(name, ref, test, registry=args.registry) for name, ref in variants if ref
    ]
    text = json.dumps([r.to_dict() for r in rows], indent=2) + "\n"
    atomic_write(args.out / "tradeoff.json", lambda p: p.write_text(text, encoding="utf-8"))
    plot_tradeoff(rows, args.out / "tradeoff.png")
    table = Table(title=f"trade-off on {len(test):,} {test.name} test images")
    columns = ("variant", "backend", "top-1", "params", "MACs", "size", "p95 b=1", "img/s b=32")
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "backend") else "right")
    for r in rows:
        table.add_row(
            r.name,
            r.backend,
            f"{100 * r.top1:.2f}%",
            f"{r.params:,}",
            f"{r.macs / 1e6:,.1f}M",
            f"{r.size_bytes / 1e6:.2f} MB",
            f"{r.p95_ms_batch1:.2f} ms",
            f"{r.images_per_s_batch32:,.0f}",
        )
    console = Console(width=max(Console().width, 110))  # eight columns need the room
    console.print(table)
    console.print(f"wrote {args.out / 'tradeoff.json'} and {args.out / 'tradeoff.png'}")
    return 0
