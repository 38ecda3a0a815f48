"""Blessing records: the gate's verdict and the run's lineage, stored on a version.

Written inside the transaction that registers the version (or, for a version gated again,
with the alias move it allows), so a version is never visible half-registered: with its
record and any alias, or not at all.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from resnetkit.registry.migrations import blessings, registered_models, utc_now, versions
from resnetkit.registry.records import Blessing, BlessingRecord

__all__ = ["blessing_for_run", "insert_blessing", "version_blessings"]


def insert_blessing(conn: Connection, version_id: int, blessing: Blessing, actor: str) -> None:
    """Record ``blessing`` on the version row ``version_id``."""
    conn.execute(
        sa.insert(blessings).values(
            version_id=version_id,
            pipeline_run=blessing.pipeline_run,
            blessed=blessing.blessed,
            baseline=blessing.baseline,
            checks=json.dumps(list(blessing.checks), sort_keys=True, default=str),
            lineage=json.dumps(blessing.lineage, sort_keys=True, default=str),
            created_by=actor,
            created_at=utc_now(),
        )
    )


def _query() -> sa.Select[tuple[object, ...]]:
    return (
        sa.select(blessings, versions.c.version, registered_models.c.name)
        .join(versions, versions.c.id == blessings.c.version_id)
        .join(registered_models, registered_models.c.id == versions.c.model_id)
    )


def _record(row: sa.Row[tuple[object, ...]]) -> BlessingRecord:
    data = row._mapping
    blessing = Blessing(
        pipeline_run=str(data["pipeline_run"]),
        blessed=bool(data["blessed"]),
        baseline=None if data["baseline"] is None else str(data["baseline"]),
        checks=tuple(json.loads(str(data["checks"]))),
        lineage=dict(json.loads(str(data["lineage"]))),
    )
    return BlessingRecord(
        name=str(data["name"]),
        version=int(str(data["version"])),
        blessing=blessing,
        created_by=str(data["created_by"]),
        created_at=str(data["created_at"]),
    )


def version_blessings(conn: Connection, version_id: int) -> list[BlessingRecord]:
    """Every blessing record of one version, oldest first (the last is current)."""
    rows = conn.execute(
        _query().where(blessings.c.version_id == version_id).order_by(blessings.c.id)
    )
    return [_record(row) for row in rows]


def blessing_for_run(conn: Connection, pipeline_run: str) -> BlessingRecord | None:
    """The record a pipeline run wrote, if it got that far (how a resumed run finds it)."""
    row = conn.execute(_query().where(blessings.c.pipeline_run == pipeline_run)).first()
    return None if row is None else _record(row)
