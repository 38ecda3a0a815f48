"""``resnetkit prune``, ``distill`` and ``tradeoff``: smaller models and what they cost."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from resnetkit.cli.export import resolve_ref
from resnetkit.cli.train import evaluate_run
from resnetkit.compress.distill import distill
from resnetkit.compress.prune import CRITERIA, prune_model
from resnetkit.compress.sparse import magnitude_prune, measure_sparsity, sparse_finetune
from resnetkit.config import OptimConfig, TrainConfig, atomic_write, from_dict, load_toml
from resnetkit.data import load_dataset
from resnetkit.errors import ConfigError
from resnetkit.export.tradeoff import measure_variant, plot_tradeoff
from resnetkit.models import ModelCard, load_model, profile, save_model
from resnetkit.train import train
from resnetkit.train.rundir import read_summary, write_summary


def add_parser(subparsers: Any) -> None:
    """Register ``prune`` and ``distill``."""
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
    t.add_argument("base", metavar="RUN", help="the original model's run directory")
    t.add_argument("--int8", help="its int8 ONNX file (from `resnetkit quantize`)")
    t.add_argument("--pruned", help="run directory of the pruned model (`resnetkit prune`)")
    t.add_argument("--distilled", help="run directory of the distilled student")
    t.add_argument("--data", default="fashion-mnist", help="test data")
    t.add_argument("--test-limit", type=int, help="measure accuracy on the first N test images")
    t.add_argument("--out", required=True, help="folder for tradeoff.json and tradeoff.png")
    t.set_defaults(func=run_tradeoff)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training recipe (default: the source run's config.toml)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--registry", help="registry for name@alias references")
    p.add_argument("--no-progress", action="store_true")


def _recipe(args: argparse.Namespace, source: Path) -> TrainConfig:
    path = Path(args.config) if args.config else source / "config.toml"
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
    return dataclasses.replace(cfg, **changes)


def run_prune(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with resolve_ref(args.ref, args.registry) as source:
        model, card = load_model(source)
        cfg = _recipe(args, source)
        before = read_summary(source).get("test_accuracy")
    if args.unstructured:
        return _prune_unstructured(args, model, card, cfg, before)
    criterion = args.criterion or "l1"
    pruned = prune_model(model, card.arch, card.kwargs, args.ratio, criterion)
    model_cfg = dataclasses.replace(cfg.model, arch=card.arch, kwargs=pruned.kwargs)
    init = _save_start(pruned.model, card, pruned.kwargs, out)
    cfg = dataclasses.replace(cfg, model=model_cfg, init_from=init)
    train(cfg, out / "run")
    summary = evaluate_run(out / "run", cfg)
    size = _input_size(card)
    _report(
        f"pruned {args.ratio:.0%} of inner filters ({criterion})",
        [
            ("original", profile(model, size), before),
            ("pruned + fine-tuned", profile(pruned.model, size), summary["test_accuracy"]),
        ],
    )
    return 0


def _prune_unstructured(
    args: argparse.Namespace, model: nn.Module, card: ModelCard, cfg: TrainConfig, before: Any
) -> int:
    if args.criterion is not None:
        raise ConfigError("--criterion ranks filters; --unstructured ranks single weights")
    out = Path(args.out)
    original_size = profile(model, _input_size(card))
    sparsity = magnitude_prune(model, args.ratio)
    cfg = dataclasses.replace(cfg, init_from=_save_start(model, card, card.kwargs, out))
    sparse_finetune(cfg, out / "run")
    summary = evaluate_run(out / "run", cfg)
    tuned, _ = load_model(out / "run")
    kept = measure_sparsity(tuned)
    summary["sparsity"] = kept.ratio
    write_summary(out / "run", summary)
    _report(
        f"zeroed {sparsity.ratio:.0%} of conv and linear weights (global magnitude)",
        [
            ("original", original_size, before),
            ("sparse + fine-tuned", profile(tuned, _input_size(card)), summary["test_accuracy"]),
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
    return str(init / "model.safetensors")


def _input_size(card: ModelCard) -> tuple[int, ...]:
    return (card.preprocessing["channels"], *card.preprocessing["size"])


def run_distill(args: argparse.Namespace) -> int:
    with resolve_ref(args.teacher, args.registry) as source:
        teacher, card = load_model(source)
        cfg = _recipe(args, source)
        before = read_summary(source).get("test_accuracy")
    kwargs = {k: v for k, v in card.kwargs.items() if k in ("num_classes", "in_chans")}
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, arch=args.student, kwargs=kwargs)
    )
    out = Path(args.out)
    distill(cfg, out, teacher, alpha=args.alpha, temperature=args.temperature)
    summary = evaluate_run(out, cfg)
    student, _ = load_model(out)
    size = _input_size(card)
    _report(
        f"distilled {card.arch} into {args.student} (alpha {args.alpha}, T {args.temperature})",
        [
            ("teacher", profile(teacher, size), before),
            ("student", profile(student, size), summary["test_accuracy"]),
        ],
    )
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
    variants = [("original", args.base), ("int8", args.int8), ("pruned", args.pruned)]
    variants.append(("distilled", args.distilled))
    test = load_dataset(args.data, "test", limit=args.test_limit)
    rows = [measure_variant(name, path, test) for name, path in variants if path]
    out = Path(args.out)
    text = json.dumps([r.to_dict() for r in rows], indent=2) + "\n"
    atomic_write(out / "tradeoff.json", lambda p: p.write_text(text, encoding="utf-8"))
    plot_tradeoff(rows, out / "tradeoff.png")
    table = Table(title=f"trade-off on {len(test):,} {args.data} test images")
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
    console.print(f"wrote {out / 'tradeoff.json'} and {out / 'tradeoff.png'}")
    return 0
