"""Typed, frozen settings for each stage, loaded from and saved to TOML.

Each stage declares a frozen dataclass (``ModelConfig`` here; later stages add theirs).
:func:`from_dict` builds one from plain data and rejects unknown keys and wrong types with a
:class:`~resnetkit.errors.ConfigError` naming the key, so a typo in a recipe fails at load
time instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "AdversarialConfig",
    "AugmentConfig",
    "DataConfig",
    "HardExamplesConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "dumps_toml",
    "from_dict",
    "load_toml",
    "save_toml",
    "to_dict",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which zoo model to build and with which keyword arguments."""

    arch: str = "resnet20"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset to train on and how to split it."""

    name: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.05
    limit: int | None = None
    test_limit: int | None = None
    skip_bad_images: bool = False
    image_size: int | None = None


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentation; ``hflip`` is ignored for datasets that forbid it (digits)."""

    crop_padding: int = 2
    hflip: bool = True
    alternate_flips: bool = False  # flip each image every other epoch instead of at random
    small_crop: int | None = None  # side of the crops in the first small_crop_epochs epochs
    small_crop_epochs: int = 0
    erase_prob: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser, learning-rate schedule and regularisation."""

    name: str = "sgd"  # sgd | adamw | muon
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"  # cosine | linear | onecycle | constant
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = None
    label_smoothing: float = 0.1
    # muon: the convolution filters' orthogonalised steps (the rest takes SGD at lr, momentum)
    muon_lr: float = 0.05
    muon_momentum: float = 0.85
    # a whitening stem's bias trains for this many epochs, then stops (None: the whole run);
    # models without a whitening stem ignore it
    whiten_bias_epochs: int | None = None


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial training: each batch is replaced by its attacked version (L-infinity).

    ``eps`` and ``alpha`` are fractions of the pixel range [0, 1], before normalisation.
    ``fgsm-rs`` is Wong et al.'s fast FGSM (random start, one step of ``alpha``, default
    ``1.25 * eps``); ``pgd`` takes ``steps`` steps of ``alpha`` (default ``2.5 * eps / steps``).
    ``clean_weight`` is the share of each batch left clean (Kurakin et al. 2017): the first
    ``round(clean_weight * B)`` images are not attacked, so the batch's mean loss is
    ``clean_weight * CE(clean) + (1 - clean_weight) * CE(adversarial)``; 0 attacks them all.
    """

    method: str = "none"  # none | fgsm-rs | pgd
    eps: float = 0.1
    steps: int = 7  # pgd only
    alpha: float | None = None
    clean_weight: float = 0.0  # in [0, 1)


@dataclasses.dataclass(frozen=True)
class HardExamplesConfig:
    """Late epochs on the hardest images only (selective backprop, Jiang et al. 2019).

    Every image's cross-entropy is recorded when it is trained on. The ``epochs`` epochs
    before the last take the ``fraction`` of the training images with the highest last-seen
    loss plus ``random_fraction`` of the rest at random, in a seeded order; the first and the
    last epoch always take all images (a shorter run has fewer hard epochs). A hard epoch is
    ``fraction + random_fraction`` of a full one.
    """

    epochs: int = 0  # 0: every epoch takes every image
    fraction: float = 0.45
    random_fraction: float = 0.05


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; saved as ``config.toml`` in the run directory."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    adversarial: AdversarialConfig = dataclasses.field(default_factory=AdversarialConfig)
    hard_examples: HardExamplesConfig = dataclasses.field(default_factory=HardExamplesConfig)
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 only on CUDA)
    channels_last: bool = True
    grad_checkpointing: bool = False
    ema_decay: float | None = None
    early_stop_patience: int | None = None
    checkpoint_every_steps: int | None = None
    init_from: str | None = None
    freeze: str = "none"  # none | backbone | bn
    sync_bn: bool = False
    device: str = "auto"
    num_threads: int | None = None
    tta_flip: bool = False
    tta_shift: int = 0  # pixels; also average test predictions over shifted views
    progress: bool = True


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
            if arg is not type(None):
                try:
                    return _check_type(name, value, arg)
                except ConfigError:
                    continue
        raise ConfigError(f"{name}: expected {hint}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        items = [
            _check_type(f"{name}[{i}]", v, args[0]) if args else v for i, v in enumerate(value)
        ]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, prefix=f"{name}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{name}: expected int, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from plain data, checking keys and types.

    Raises:
        ConfigError: on an unknown key or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a table, got {data!r}")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix}{unknown[0]!s} in {cls.__name__}; "
            f"known settings: {', '.join(sorted(fields))}"
        )
    values = {k: _check_type(f"{prefix}{k}", v, hints[k]) for k, v in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass (tuples become lists)."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(obj)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file.

    Raises:
        ConfigError: when the file is missing or not valid TOML.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are all valid in TOML basic strings; TOML also forbids DEL raw.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def dumps_toml(data: Mapping[str, Any], _path: tuple[str, ...] = ()) -> str:
    """Serialise plain data (scalars, lists, nested tables) as TOML text."""
    scalars = [(k, v) for k, v in data.items() if v is not None and not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
    lines = []
    if _path and (scalars or not tables):
        lines.append("[" + ".".join(_toml_key(k) for k in _path) + "]")
    lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars)
    text = "\n".join(lines)
    for key, table in tables:
        text += "\n\n" + dumps_toml(table, (*_path, key)).rstrip("\n")
    return text.strip() + "\n"


def save_toml(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as TOML atomically."""
    text = dumps_toml(data)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
