"""The model registry: immutable versions, aliases with an audit log, verified artifacts.

It stores bytes and metadata and never imports model code::

    from resnetkit.registry import open_registry

    with open_registry("sqlite:///./resnetkit.db") as store:
        info = store.register("runs/exp1", "fashion-resnet20")
        store.set_alias(info.name, "production", info.version, reason="beats v2 by 0.4%")
        loaded = store.load("fashion-resnet20@production")  # sha256-verified bytes

Names are imported from their submodules on first use: parsing a reference does not load
SQLAlchemy (a server that serves an ``.onnx`` file never opens a registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnetkit.lazy import lazy_attributes

if TYPE_CHECKING:
    from resnetkit.registry.artifacts import ArtifactStore
    from resnetkit.registry.migrations import LATEST_SCHEMA_VERSION
    from resnetkit.registry.records import (
        AliasEvent,
        ArtifactInfo,
        Blessing,
        BlessingRecord,
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

_LAZY: dict[str, str] = {
    "AliasEvent": "resnetkit.registry.records",
    "ArtifactInfo": "resnetkit.registry.records",
    "ArtifactStore": "resnetkit.registry.artifacts",
    "Blessing": "resnetkit.registry.records",
    "BlessingRecord": "resnetkit.registry.records",
    "DEFAULT_REGISTRY_URL": "resnetkit.registry.store",
    "GcReport": "resnetkit.registry.records",
    "LATEST_SCHEMA_VERSION": "resnetkit.registry.migrations",
    "LoadedVersion": "resnetkit.registry.records",
    "ModelSummary": "resnetkit.registry.records",
    "PathRef": "resnetkit.registry.refs",
    "RegistrationOptions": "resnetkit.registry.store",
    "RegistryRef": "resnetkit.registry.refs",
    "RegistryStore": "resnetkit.registry.store",
    "VerifyReport": "resnetkit.registry.records",
    "VersionInfo": "resnetkit.registry.records",
    "open_registry": "resnetkit.registry.store",
    "parse_ref": "resnetkit.registry.refs",
    "registry_url": "resnetkit.registry.store",
    "validate_name": "resnetkit.registry.refs",
}

__all__ = [
    "DEFAULT_REGISTRY_URL",
    "LATEST_SCHEMA_VERSION",
    "AliasEvent",
    "ArtifactInfo",
    "ArtifactStore",
    "Blessing",
    "BlessingRecord",
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


__getattr__ = lazy_attributes(__name__, _LAZY)
