"""The pipeline file (TOML): what to train, which data gate it, the thresholds, the rollout.

Every key has a default; a pipeline run without a file uses them all (the baseline is NAME's
``production`` version, the candidate is trained with production's own recorded recipe and
gated on the test split of the data it trained on). Unknown keys are refused by name.
Relative paths are read from the pipeline file's folder.

    [train]
    recipe = "../fashion_mnist_fast.toml"  # a `resnetkit train` file
    epochs = 3                             # override the recipe's epochs

    [data]
    feedback = "feedback/"        # export-feedback's ImageFolder: train/, holdout/, manifest.json
    feedback_fraction = 0.3       # share of the training set made of feedback images
    eval_limit = 10000            # test images the gate uses (default: all)

    [gate]
    min_accuracy = 0.80           # on every gate set
    max_accuracy_drop_points = 1.0
    max_mce_increase = 15.0       # robustness vs production (off unless set)
    max_ood_auroc_drop = 0.02
    ...

    [rollout]
    timeout_s = 1800
    [rollout.canary]              # the server's rollout settings (resnetkit rollout --config)
    steps = [10, 50, 100]
    interval_s = 30
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from resnetkit.config import from_dict, load_toml, to_dict
from resnetkit.errors import ConfigError

__all__ = [
    "DataSection",
    "GateSection",
    "PipelineConfig",
    "RolloutSection",
    "TrainSection",
    "load_pipeline_config",
]

#: The artifact whose latency and size the gate budgets: what the server would run.
ARTIFACTS = ("onnx", "onnx-int8")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """How the candidate is trained (skipped with ``--candidate``)."""

    recipe: str | None = None  # default: the config recorded with the production version
    epochs: int | None = None  # override the recipe's epochs
    seed: int | None = None  # override the recipe's seed


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The data the candidate trains on and the frozen sets that gate it."""

    eval: str | None = None  # gate on this dataset's test split (default: the training data's)
    eval_dir: str | None = None  # its data_dir, where the source needs one
    eval_limit: int | None = None  # the first N test images (default: all)
    feedback: str | None = None  # export-feedback's folder: train/, holdout/, manifest.json
    feedback_fraction: float = 0.3  # share of the training set made of feedback images

    def __post_init__(self) -> None:
        if not 0 < self.feedback_fraction < 1:
            raise ConfigError(
                f"data.feedback_fraction must be in (0, 1), got {self.feedback_fraction}"
            )
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"data.eval_limit must be at least 1, got {self.eval_limit}")


@dataclasses.dataclass(frozen=True)
class GateSection:
    """The thresholds of the blessing: value thresholds and changes against production."""

    min_accuracy: float = 0.80  # top-1 on every gate set
    max_accuracy_drop_points: float = 1.0  # vs production: lower CI bound of the paired diff
    max_class_drop_points: float = 5.0  # vs production: any class's recall
    min_class_samples: int = 50  # a class with fewer gate images is not compared
    max_ece: float = 0.10  # expected calibration error, on every gate set
    max_ece_increase: float = 0.03  # vs production
    artifact: str = "onnx"  # what the server runs: onnx (fp32) or onnx-int8
    max_latency_ms: float = 50.0  # p95 of one image on ONNX Runtime, one thread
    max_size_mb: float = 100.0  # the served artifact's file size
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    seed: int = 0  # the bootstrap's, the corruptions' and the far-OOD sets' seed
    # Robustness against production, both off by default (each costs a minute or more):
    max_mce_increase: float | None = None  # points: candidate's mCE, production's errors = 100
    max_ood_auroc_drop: float | None = None  # served detector's AUROC, on every far-OOD set
    robustness_images: int = 1000  # the first N gate test images, for both checks
    robustness_severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    robustness_corruptions: tuple[str, ...] = ()  # empty: all fourteen

    def __post_init__(self) -> None:
        self._check_robustness()
        if self.artifact not in ARTIFACTS:
            raise ConfigError(f"gate.artifact must be one of {', '.join(ARTIFACTS)}")
        if not 0 <= self.min_accuracy <= 1:
            raise ConfigError(f"gate.min_accuracy must be in [0, 1], got {self.min_accuracy}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"gate.confidence must be in [0.5, 1), got {self.confidence}")
        if self.bootstrap_samples < 100:
            raise ConfigError("gate.bootstrap_samples must be at least 100")
        for name in ("max_accuracy_drop_points", "max_class_drop_points", "max_ece",
                     "max_ece_increase", "max_latency_ms", "max_size_mb"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ConfigError(f"gate.{name} must be >= 0, got {getattr(self, name)}")

    def _check_robustness(self) -> None:
        if self.max_mce_increase is not None and self.max_mce_increase < 0:
            raise ConfigError(f"gate.max_mce_increase must be >= 0, got {self.max_mce_increase}")
        drop = self.max_ood_auroc_drop
        if drop is not None and not 0 <= drop <= 1:
            raise ConfigError(f"gate.max_ood_auroc_drop must be in [0, 1], got {drop}")
        if self.robustness_images < 1:
            raise ConfigError(
                f"gate.robustness_images must be at least 1, got {self.robustness_images}"
            )
        bad = [s for s in self.robustness_severities if s not in range(1, 6)]
        if bad or not self.robustness_severities:
            raise ConfigError(
                f"gate.robustness_severities must be severities 1 to 5, got "
                f"{list(self.robustness_severities)}"
            )
        if self.robustness_corruptions:
            from resnetkit.monitor.corruptions import CORRUPTIONS

            unknown = [c for c in self.robustness_corruptions if c not in CORRUPTIONS]
            if unknown:
                raise ConfigError(
                    f"gate.robustness_corruptions: unknown {unknown[0]!r}; use names from "
                    f"{', '.join(CORRUPTIONS)}"
                )

    @property
    def robustness_checked(self) -> bool:
        """Whether the gate evaluates robustness at all (either check configured)."""
        return self.max_mce_increase is not None or self.max_ood_auroc_drop is not None


@dataclasses.dataclass(frozen=True)
class RolloutSection:
    """The canary rollout on ``--server``: the server's settings and how long to wait."""

    timeout_s: float = 1800.0
    poll_s: float = 2.0
    canary: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.poll_s <= 0:
            raise ConfigError("rollout.timeout_s and rollout.poll_s must be positive")
        # The server checks ``canary`` when the rollout starts; `resnetkit pipeline run`
        # checks it at once with the server's own RolloutConfig (the pipeline does not
        # import the server).


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline file."""

    registry: str | None = None  # default: $RESNETKIT_REGISTRY, else ./resnetkit.db
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    gate: GateSection = dataclasses.field(default_factory=GateSection)
    rollout: RolloutSection = dataclasses.field(default_factory=RolloutSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (recorded in the lineage and the step state)."""
        return to_dict(self)

    def digest(self) -> str:
        """A short fingerprint of the settings: a resumed run must have the same."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_pipeline_config(path: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """Read a pipeline file, or the documented defaults when ``path`` is None.

    Raises:
        ConfigError: a missing file, invalid TOML, an unknown key (named) or a bad value.
    """
    if path is None:
        return PipelineConfig()
    data = load_toml(path)
    try:
        cfg = from_dict(PipelineConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    base = Path(path).resolve().parent
    train = dataclasses.replace(cfg.train, recipe=_resolve(base, cfg.train.recipe))
    data_section = dataclasses.replace(
        cfg.data,
        feedback=_resolve(base, cfg.data.feedback),
        eval_dir=_resolve(base, cfg.data.eval_dir),
    )
    return dataclasses.replace(cfg, train=train, data=data_section)
