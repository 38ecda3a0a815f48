"""``resnetkit train``: a config (recipe file + flags) → a run directory, evaluated on test.

The CLI only assembles a :class:`~resnetkit.config.TrainConfig`, calls
:func:`resnetkit.train.train`, then :func:`resnetkit.train.evaluate_run` on the test split
(which the training loop never touches), which records the result in ``summary.json``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from resnetkit.config import TrainConfig, from_dict, load_toml, to_dict
from resnetkit.contract import CONFIG_TOML, read_summary, write_summary
from resnetkit.errors import ConfigError
from resnetkit.fileio import check_output_dir
from resnetkit.train import TrainResult, check_config, evaluate_run, train
from resnetkit.train.rundir import RESUMABLE_SETTINGS, flatten_settings, has_checkpoint

# flag → (section, field) of TrainConfig; section None means top level.
_OVERRIDES: dict[str, tuple[str | None, str]] = {
    "data": ("data", "name"),
    "data_dir": ("data", "data_dir"),
    "limit": ("data", "limit"),
    "test_limit": ("data", "test_limit"),
    "val_fraction": ("data", "val_fraction"),
    "skip_bad_images": ("data", "skip_bad_images"),
    "image_size": ("data", "image_size"),
    "lr": ("optim", "lr"),
    "optimizer": ("optim", "name"),
    "epochs": (None, "epochs"),
    "batch_size": (None, "batch_size"),
    "seed": (None, "seed"),
    "precision": (None, "precision"),
    "device": (None, "device"),
    "init_from": (None, "init_from"),
    "freeze": (None, "freeze"),
    "ema_decay": (None, "ema_decay"),
    "num_threads": (None, "num_threads"),
    "sync_bn": (None, "sync_bn"),
    "checkpoint_every_steps": (None, "checkpoint_every_steps"),
    "tta_flip": (None, "tta_flip"),
    "tta_shift": (None, "tta_shift"),
    "early_stop_patience": (None, "early_stop_patience"),
    "hard_epochs": ("hard_examples", "epochs"),
}


def add_parser(subparsers: Any) -> None:
    """Register ``train``."""
    p = subparsers.add_parser("train", help="train a zoo model on real data into a run directory")
    p.add_argument("--config", help="a TOML recipe, e.g. configs/fashion_mnist_fast.toml")
    p.add_argument("--model", help="zoo model name (see `resnetkit models list`)")
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model argument, e.g. width=2 (repeatable)",
    )
    p.add_argument("--data", help="fashion-mnist, mnist, cifar10, cifar100, image-folder, ...")
    p.add_argument("--data-dir", help="where the dataset lives")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="evaluate on only the first N test images")
    p.add_argument("--val-fraction", type=float, help="share of training data held out")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="image folders: leave unreadable files out (they are listed) instead of failing",
    )
    p.add_argument(
        "--image-size", type=int, help="image folders: resize every image to SIZE x SIZE"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", choices=["sgd", "adamw", "muon"])
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--init-from", help="checkpoint to start from (ours, torchvision or timm)")
    p.add_argument("--freeze", choices=["none", "backbone", "bn"])
    p.add_argument("--ema-decay", type=float, help="keep an EMA of the weights, e.g. 0.999")
    p.add_argument("--early-stop-patience", type=int)
    p.add_argument(
        "--hard-epochs",
        type=int,
        metavar="N",
        help="train the N epochs before the last on the hardest images only (0: off)",
    )
    p.add_argument("--num-threads", type=int)
    p.add_argument("--sync-bn", action="store_true", default=None)
    p.add_argument("--checkpoint-every-steps", type=int)
    p.add_argument("--tta-flip", action="store_true", default=None, help="flip-averaged test")
    p.add_argument("--tta-shift", type=int, metavar="PX", help="also average shifted test views")
    p.add_argument("--out", help="run directory (default: runs/MODEL-DATA-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _parse_model_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-arg takes KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text  # a bare word such as norm=group
    return out


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe (if any) with every given flag applied on top."""
    base = from_dict(TrainConfig, load_toml(args.config)) if args.config else TrainConfig()
    sections: dict[str | None, dict[str, Any]] = {None: {}}
    for flag, (section, name) in _OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            sections.setdefault(section, {})[name] = value
    if args.no_progress:
        sections[None]["progress"] = False
    model = base.model
    if args.model or args.model_arg:
        own = model.kwargs if _keeps_recipe_model_args(args, model.arch) else {}
        kwargs = {**own, **_parse_model_args(args.model_arg)}
        model = dataclasses.replace(model, arch=args.model or model.arch, kwargs=kwargs)
    updates: dict[str, Any] = {"model": model, **sections.pop(None)}
    for section, values in sections.items():
        assert section is not None
        updates[section] = dataclasses.replace(getattr(base, section), **values)
    return dataclasses.replace(base, **updates)


def _keeps_recipe_model_args(args: argparse.Namespace, recipe_arch: str | None) -> bool:
    """The recipe's model arguments belong to the recipe's model: another ``--model`` starts
    from its own defaults (a resnet8 has no whitening stem to keep)."""
    return args.model in (None, recipe_arch)


def _given_paths(args: argparse.Namespace) -> dict[str, str | None]:
    """Dotted config path → the flag that sets it (None: the --config recipe sets it)."""
    given: dict[str, str | None] = {}
    if args.config:
        recipe = load_toml(args.config)
        keep = _keeps_recipe_model_args(args, recipe.get("model", {}).get("arch"))
        for path in flatten_settings(recipe):
            if keep or not path.startswith("model.kwargs."):
                given[path] = None
    for flag, (section, name) in _OVERRIDES.items():
        if getattr(args, flag, None) is not None:
            given[f"{section}.{name}" if section else name] = f"--{flag.replace('_', '-')}"
    if args.model:
        given["model.arch"] = "--model"
    for key in _parse_model_args(args.model_arg):
        given[f"model.kwargs.{key}"] = f"--model-arg {key}"
    return given


def _show(value: Any) -> str:
    return "(not set)" if value is None else repr(value)


def _resume_changes(args: argparse.Namespace, saved: TrainConfig) -> str:
    """What the command line would change in the recorded config, as ``--flag (recorded
    A, given B), ...``, or ``""``; settings that only change how a run executes are left out."""
    recorded = flatten_settings(to_dict(saved))
    wanted = flatten_settings(to_dict(build_config(args)))
    flags: list[str] = []
    recipe: list[str] = []
    for path, flag in _given_paths(args).items():
        if path.split(".")[0] in RESUMABLE_SETTINGS or recorded.get(path) == wanted.get(path):
            continue
        values = f"(recorded {_show(recorded.get(path))}, given {_show(wanted.get(path))})"
        (flags if flag else recipe).append(f"{flag or path} {values}")
    if recipe:
        flags.append(f"--config {args.config} with {', '.join(recipe)};")
    return ", ".join(flags).removesuffix(";")


def _resume_config(args: argparse.Namespace) -> TrainConfig:
    """The run's recorded config; flags may repeat it, and change only how the run executes.

    Raises:
        ConfigError: without --out or a checkpoint, or naming every flag that would change
            the recorded config, with its recorded and given value.
    """
    if not args.out:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    out = Path(args.out)
    if not has_checkpoint(out):
        done = (out / "model.safetensors").is_file()
        what = "finished: nothing to resume" if done else "has no checkpoint to resume from"
        raise ConfigError(f"{out} {what}; start a new run without --resume")
    saved = from_dict(TrainConfig, load_toml(out / CONFIG_TOML))
    changed = _resume_changes(args, saved)
    if changed:
        raise ConfigError(
            f"--resume continues {out} with its recorded config; {changed} would "
            "change it (start a new run with another --out instead)"
        )
    changes: dict[str, Any] = {}
    if args.no_progress:
        changes["progress"] = False
    for flag in ("device", "num_threads"):
        if getattr(args, flag) is not None:
            changes[flag] = getattr(args, flag)
    return dataclasses.replace(saved, **changes)


def _report_skipped(summary: dict[str, Any]) -> None:
    skipped = summary.get("dataset", {}).get("skipped") or []
    if not skipped:
        return
    console = Console(stderr=True)
    console.print(f"[yellow]skipped {len(skipped)} unreadable image(s)[/] (all in summary.json):")
    for bad in skipped[:10]:
        console.print(f"  {bad['path']}: {bad['reason']}", markup=False)
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more")


def _print_summary(result: TrainResult, summary: dict[str, Any], wall_s: float) -> None:
    table = Table(title=f"run {result.run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("epochs", str(result.epochs_run) + (" (stopped early)" if result.stopped_early else "")),
        ("best val accuracy", _pct(result.best_val_accuracy)),
        ("test accuracy", _pct(summary.get("test_accuracy"))),
        ("test top-5", _pct(summary.get("test_top5"))),
        (
            "training images/s",
            f"{result.steady_images_per_s:,.0f} (whole run {result.images_per_s:,.0f})",
        ),
        ("wall time", f"{wall_s:,.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _default_out(cfg: TrainConfig) -> Path:
    """``runs/ARCH-DATA-TIME``; a data path contributes only its last part, no slashes."""
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.data.name).name) or "data"
    return Path(f"runs/{cfg.model.arch}-{data}-{time.strftime('%Y%m%d-%H%M%S')}")


def _fit_ood_detector(out: Path) -> None:
    """The per-request OOD detector, fitted on the drift reference the trainer just wrote
    (held-out images), saved beside it so it travels with the run and its versions."""
    from resnetkit.contract import DRIFT_REFERENCE, OOD_DETECTOR
    from resnetkit.monitor.ood import fit_from_reference

    if (out / DRIFT_REFERENCE).is_file():
        source = "the run's drift reference (validation split, or training images without one)"
        fit_from_reference(out / DRIFT_REFERENCE, source=source).save(out / OOD_DETECTOR)


def run(args: argparse.Namespace) -> int:
    """``resnetkit train``: a run directory, evaluated on the test split."""
    start = time.perf_counter()
    cfg = _resume_config(args) if args.resume else build_config(args)
    check_config(cfg)
    out = Path(args.out) if args.out else _default_out(cfg)
    check_output_dir(out, what="--out")
    result = train(cfg, out, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 alone evaluates and reports
    _fit_ood_detector(out)
    # evaluate_run already merges its test metrics into summary.json and returns the whole.
    summary = read_summary(out) if args.no_eval else evaluate_run(out, cfg)
    wall_s = time.perf_counter() - start
    summary["wall_seconds"] = round(wall_s, 2)
    write_summary(out, summary)
    _print_summary(result, summary, wall_s)
    _report_skipped(summary)
    return 0
