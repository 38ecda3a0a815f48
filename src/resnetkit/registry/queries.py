"""Read-side queries: rows of the registry tables turned into records."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from resnetkit.errors import RegistryError
from resnetkit.registry.migrations import (
    alias_events,
    aliases,
    registered_models,
    version_artifacts,
    versions,
)
from resnetkit.registry.records import AliasEvent, ArtifactInfo, ModelSummary, VersionInfo
from resnetkit.registry.refs import RegistryRef

__all__ = [
    "alias_history",
    "find_model_id",
    "list_model_summaries",
    "list_version_infos",
    "require_model_id",
    "resolve_version",
    "version_info",
]


def find_model_id(conn: Connection, name: str, *, lock: bool = False) -> int | None:
    """The id of a registered model, optionally locking its row for this transaction."""
    query = sa.select(registered_models.c.id).where(registered_models.c.name == name)
    if lock:
        query = query.with_for_update()
    found = conn.execute(query).scalar()
    return None if found is None else int(found)


def require_model_id(conn: Connection, name: str, *, lock: bool = False) -> int:
    """Like :func:`find_model_id`, raising a helpful error when the model is unknown."""
    model_id = find_model_id(conn, name, lock=lock)
    if model_id is None:
        names = conn.execute(
            sa.select(registered_models.c.name).order_by(registered_models.c.name).limit(10)
        ).scalars()
        known = ", ".join(names) or "none yet"
        raise RegistryError(f"no registered model named {name!r} (registered: {known})")
    return model_id


def version_numbers(conn: Connection, model_id: int) -> list[int]:
    """The version numbers a model has, ascending."""
    query = sa.select(versions.c.version).where(versions.c.model_id == model_id)
    return sorted(int(v) for v in conn.execute(query).scalars())


def _describe_versions(numbers: list[int]) -> str:
    if not numbers:
        return "it has no versions"
    shown = ", ".join(str(n) for n in numbers[-10:])
    return f"its versions are {shown}" if len(numbers) <= 10 else f"its latest are {shown}"


def resolve_version(conn: Connection, ref: RegistryRef) -> tuple[int, int]:
    """The (model id, version row id) a reference points at.

    Raises:
        RegistryError: naming what exists when the reference points at nothing.
    """
    model_id = require_model_id(conn, ref.name)
    query = sa.select(versions.c.id).where(versions.c.model_id == model_id)
    if ref.alias is not None:
        query = sa.select(aliases.c.version_id).where(
            aliases.c.model_id == model_id, aliases.c.alias == ref.alias
        )
        found = conn.execute(query).scalar()
        if found is None:
            known = ", ".join(alias_map(conn, model_id)) or "none"
            raise RegistryError(f"{ref.name} has no alias {ref.alias!r} (aliases: {known})")
        return model_id, int(found)
    if ref.version is not None:
        query = query.where(versions.c.version == ref.version)
    else:
        query = query.order_by(versions.c.version.desc()).limit(1)
    found = conn.execute(query).scalar()
    if found is None:
        what = f"version {ref.version}" if ref.version is not None else "any version"
        numbers = version_numbers(conn, model_id)
        raise RegistryError(f"{ref.name} has no {what}; {_describe_versions(numbers)}")
    return model_id, int(found)


def alias_map(conn: Connection, model_id: int) -> dict[str, int]:
    """Alias name → version number for one model."""
    query = (
        sa.select(aliases.c.alias, versions.c.version)
        .join(versions, versions.c.id == aliases.c.version_id)
        .where(aliases.c.model_id == model_id)
        .order_by(aliases.c.alias)
    )
    return {row.alias: int(row.version) for row in conn.execute(query)}


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _info_from_row(
    row: Row[Any], artifacts: tuple[ArtifactInfo, ...], names: tuple[str, ...]
) -> VersionInfo:
    return VersionInfo(
        name=row.name,
        version=int(row.version),
        created_at=row.created_at,
        created_by=row.created_by,
        description=row.description,
        source_kind=row.source_kind,
        source_path=row.source_path,
        model_json=_loads(row.model_json),
        metrics=_loads(row.metrics),
        tags=_loads(row.tags),
        dataset_fingerprint=row.dataset_fingerprint,
        run_id=row.run_id,
        run_config=row.run_config,
        code_version=row.code_version,
        artifacts=artifacts,
        aliases=names,
    )


def version_info(conn: Connection, version_id: int) -> VersionInfo:
    """The full record of one version row."""
    row = conn.execute(
        sa.select(versions, registered_models.c.name)
        .join(registered_models, registered_models.c.id == versions.c.model_id)
        .where(versions.c.id == version_id)
    ).one()
    files = conn.execute(
        sa.select(version_artifacts)
        .where(version_artifacts.c.version_id == version_id)
        .order_by(version_artifacts.c.filename)
    )
    artifacts = tuple(ArtifactInfo(f.filename, f.digest, int(f.size_bytes)) for f in files)
    names = conn.execute(
        sa.select(aliases.c.alias).where(aliases.c.version_id == version_id).order_by("alias")
    ).scalars()
    return _info_from_row(row, artifacts, tuple(names))


def list_version_infos(conn: Connection, name: str) -> list[VersionInfo]:
    """Every version of a model, oldest first."""
    model_id = require_model_id(conn, name)
    ids = conn.execute(
        sa.select(versions.c.id).where(versions.c.model_id == model_id).order_by(versions.c.version)
    ).scalars()
    return [version_info(conn, int(i)) for i in ids]


def list_model_summaries(conn: Connection) -> list[ModelSummary]:
    """Every registered model with its version count, latest version and aliases."""
    stats = (
        sa.select(
            versions.c.model_id,
            sa.func.count().label("n_versions"),
            sa.func.max(versions.c.version).label("latest"),
        )
        .group_by(versions.c.model_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(registered_models, stats.c.n_versions, stats.c.latest)
        .outerjoin(stats, stats.c.model_id == registered_models.c.id)
        .order_by(registered_models.c.name)
    )
    return [
        ModelSummary(
            name=row.name,
            created_at=row.created_at,
            version_count=int(row.n_versions or 0),
            latest_version=None if row.latest is None else int(row.latest),
            aliases=alias_map(conn, int(row.id)),
        )
        for row in rows
    ]


def alias_history(conn: Connection, model_id: int, alias: str | None = None) -> list[AliasEvent]:
    """The audit log of a model's aliases (one alias, or all), oldest first."""
    query = (
        sa.select(alias_events, registered_models.c.name)
        .join(registered_models, registered_models.c.id == alias_events.c.model_id)
        .where(alias_events.c.model_id == model_id)
        .order_by(alias_events.c.id)
    )
    if alias is not None:
        query = query.where(alias_events.c.alias == alias)
    return [
        AliasEvent(
            id=int(r.id),
            name=r.name,
            alias=r.alias,
            kind=r.kind,
            from_version=r.from_version,
            to_version=r.to_version,
            actor=r.actor,
            created_at=r.created_at,
            reason=r.reason,
        )
        for r in conn.execute(query)
    ]


def versions_with_artifact(conn: Connection, name: str, filename: str, digest: str) -> list[int]:
    """Version numbers of ``name`` whose artifact ``filename`` has this digest."""
    model_id = find_model_id(conn, name)
    if model_id is None:
        return []
    rows = conn.execute(
        sa.select(versions.c.version)
        .join(version_artifacts, version_artifacts.c.version_id == versions.c.id)
        .where(
            versions.c.model_id == model_id,
            version_artifacts.c.filename == filename,
            version_artifacts.c.digest == digest,
        )
        .order_by(versions.c.version)
    )
    return [int(v) for v in rows.scalars()]
