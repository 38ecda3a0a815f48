"""Plain, immutable records the registry returns: versions, models, alias events, reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AliasEvent",
    "ArtifactInfo",
    "Blessing",
    "BlessingRecord",
    "GcReport",
    "LoadedVersion",
    "ModelSummary",
    "VerifyReport",
    "VersionInfo",
]


@dataclass(frozen=True)
class ArtifactInfo:
    """One file of a version: its name in the run directory, digest and size."""

    filename: str
    digest: str
    size_bytes: int


@dataclass(frozen=True)
class VersionInfo:
    """Everything recorded about one immutable model version."""

    name: str
    version: int
    created_at: str
    created_by: str
    description: str
    source_kind: str
    source_path: str
    model_json: dict[str, Any]
    metrics: dict[str, Any]
    tags: dict[str, str]
    dataset_fingerprint: str | None
    run_id: str | None
    run_config: str | None
    code_version: str | None
    artifacts: tuple[ArtifactInfo, ...]
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """The reference that names exactly this version (``name:3``)."""
        return f"{self.name}:{self.version}"

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing spec that travels with the model (empty when unknown)."""
        return dict(self.model_json.get("preprocessing", {}))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelSummary:
    """One registered model, for listings."""

    name: str
    created_at: str
    version_count: int
    latest_version: int | None
    aliases: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AliasEvent:
    """One entry of the append-only alias audit log."""

    id: int
    name: str
    alias: str
    kind: str  # "set", "rollback" or "remove"
    from_version: int | None
    to_version: int | None
    actor: str
    created_at: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoadedVersion:
    """The verified bytes of every artifact of a version, with its record.

    ``info`` is None when the reference was a path outside the registry.
    """

    info: VersionInfo | None
    model_json: dict[str, Any]
    files: dict[str, bytes]
    source: Path | None = None

    @property
    def weights(self) -> bytes:
        """The safetensors weights, or the ONNX model when that is what was registered."""
        for name in ("model.safetensors", "model.onnx"):
            if name in self.files:
                return self.files[name]
        raise KeyError("this version holds neither model.safetensors nor model.onnx")


@dataclass
class VerifyReport:
    """The outcome of :meth:`RegistryStore.verify`."""

    checked_files: int = 0
    checked_versions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every artifact is present and matches its digest."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {**dataclasses.asdict(self), "ok": self.ok}


@dataclass
class GcReport:
    """Files ``gc`` removed, or would remove in a dry run."""

    dry_run: bool
    files: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_recent: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Blessing:
    """The gate's verdict on a candidate, as a pipeline run records it on the version.

    Attributes:
        pipeline_run: the id of the pipeline run that gated it (one record per run).
        blessed: whether every check passed.
        baseline: the version it was compared with (``name:3``), None for "no baseline".
        checks: each check as ``{"name", "value", "threshold", "passed", ...}``.
        lineage: what the run used: data fingerprints, the config, the baseline, the trainer.
    """

    pipeline_run: str
    blessed: bool
    baseline: str | None
    checks: tuple[dict[str, Any], ...] = ()
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[str]:
        """Names of the checks that did not pass."""
        return [str(c["name"]) for c in self.checks if c.get("passed") is False]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {**dataclasses.asdict(self), "checks": list(self.checks)}


@dataclass(frozen=True)
class BlessingRecord:
    """A :class:`Blessing` as the registry holds it: on which version, by whom, when."""

    name: str
    version: int
    blessing: Blessing
    created_by: str
    created_at: str

    @property
    def ref(self) -> str:
        """The version it is recorded on (``name:3``)."""
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "version": self.ref,
            "created_by": self.created_by,
            "created_at": self.created_at,
            **self.blessing.to_dict(),
        }
