"""The model registry: immutable versions, aliases with an audit log, verified artifacts.

It stores bytes and metadata and never imports model code::

    from resnetkit.registry import open_registry

    with open_registry("sqlite:///./resnetkit.db") as store:
        info = store.register("runs/exp1", "fashion-resnet20")
        store.set_alias(info.name, "production", info.version, reason="beats v2 by 0.4%")
        loaded = store.load("fashion-resnet20@production")  # sha256-verified bytes
"""

from __future__ import annotations

from resnetkit.registry.artifacts import ArtifactStore
from resnetkit.registry.migrations import LATEST_SCHEMA_VERSION
from resnetkit.registry.records import (
    AliasEvent,
    ArtifactInfo,
    GcReport,
    LoadedVersion,
    ModelSummary,
    VerifyReport,
    VersionInfo,
)
from resnetkit.registry.refs import PathRef, RegistryRef, parse_ref, validate_name
from resnetkit.registry.store import (
    DEFAULT_REGISTRY_URL,
    RegistrationOptions,
    RegistryStore,
    open_registry,
    registry_url,
)

__all__ = [
    "DEFAULT_REGISTRY_URL",
    "LATEST_SCHEMA_VERSION",
    "AliasEvent",
    "ArtifactInfo",
    "ArtifactStore",
    "GcReport",
    "LoadedVersion",
    "ModelSummary",
    "PathRef",
    "RegistrationOptions",
    "RegistryRef",
    "RegistryStore",
    "VerifyReport",
    "VersionInfo",
    "open_registry",
    "parse_ref",
    "registry_url",
    "validate_name",
]
