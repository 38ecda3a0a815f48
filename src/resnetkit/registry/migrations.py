"""The registry schema and its versioned migrations.

``resnetkit_schema`` holds one row per applied migration. Opening a store applies the
missing ones in one transaction (serialised between processes), and refuses a store whose
schema is newer than this code knows, rather than guessing at it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from resnetkit.errors import RegistryError

__all__ = [
    "LATEST_SCHEMA_VERSION",
    "alias_events",
    "aliases",
    "blessings",
    "metadata",
    "migrate",
    "registered_models",
    "schema_version",
    "settings",
    "version_artifacts",
    "versions",
]

metadata = sa.MetaData()

schema_table = sa.Table(
    "resnetkit_schema",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.String(40), nullable=False),
)

settings = sa.Table(
    "registry_settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

registered_models = sa.Table(
    "registered_models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("next_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_models.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("source_kind", sa.String(20), nullable=False),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("model_json", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("dataset_fingerprint", sa.String(200)),
    sa.Column("run_id", sa.String(200)),
    sa.Column("run_config", sa.Text),
    sa.Column("code_version", sa.String(200)),
    sa.UniqueConstraint("model_id", "version", name="uq_model_version"),
)

version_artifacts = sa.Table(
    "version_artifacts",
    metadata,
    sa.Column(
        "version_id",
        sa.Integer,
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("filename", sa.String(255), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_models.id"), primary_key=True),
    sa.Column("alias", sa.String(128), primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

alias_events = sa.Table(
    "alias_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_models.id"), nullable=False),
    sa.Column("alias", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index("ix_alias_events_model_alias", "model_id", "alias"),
)

# Canary rollouts: their state, what each replica measured, who runs the analysis, and the
# audit log of every step, promotion and rollback. Replicas agree through these tables.
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_models.id"), nullable=False),
    sa.Column("stable_version", sa.Integer, nullable=False),
    sa.Column("canary_version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("canary_weight", sa.Float, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("checks", sa.Text, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.Column("step_started_at", sa.String(40), nullable=False),
    sa.Column("finished_at", sa.String(40)),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Index("ix_rollouts_model_state", "model_id", "state"),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_rollout_events_rollout", "rollout_id"),
)

rollout_stats = sa.Table(
    "rollout_stats",
    metadata,
    sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), primary_key=True),
    sa.Column("replica", sa.String(200), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

rollout_leases = sa.Table(
    "rollout_leases",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_models.id"), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# The gate's verdict on a version (TFX's "blessing") and the lineage of the pipeline run that
# gave it: which data, which baseline version it was compared with, which config. A version
# may be gated more than once (against a later production); the newest record is current.
blessings = sa.Table(
    "version_blessings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "version_id",
        sa.Integer,
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("pipeline_run", sa.String(64), nullable=False, unique=True),
    sa.Column("blessed", sa.Boolean, nullable=False),
    sa.Column("baseline", sa.String(200)),
    sa.Column("checks", sa.Text, nullable=False),
    sa.Column("lineage", sa.Text, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Index("ix_version_blessings_version", "version_id"),
)

_V1_TABLES = (schema_table, settings, registered_models, versions, version_artifacts, aliases)


def _v1_core(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V1_TABLES))


def _v2_alias_audit(conn: Connection) -> None:
    metadata.create_all(conn, tables=[alias_events])
    # Plain DDL: an sa.Index object would attach itself to the shared table metadata.
    conn.execute(sa.text("CREATE INDEX ix_version_artifacts_digest ON version_artifacts (digest)"))


def _v3_rollouts(conn: Connection) -> None:
    metadata.create_all(conn, tables=[rollouts, rollout_events, rollout_stats, rollout_leases])


def _v4_blessings(conn: Connection) -> None:
    metadata.create_all(conn, tables=[blessings])


#: Migration N brings a store from schema N-1 to N. Append; never edit a released one.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _v1_core,
    _v2_alias_audit,
    _v3_rollouts,
    _v4_blessings,
)
LATEST_SCHEMA_VERSION = len(MIGRATIONS)


def utc_now() -> str:
    """The current time as ISO 8601 UTC text (sorts chronologically)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def schema_version(conn: Connection) -> int:
    """The schema version of the store behind ``conn`` (0 for an empty database)."""
    if not sa.inspect(conn).has_table(schema_table.name):
        return 0
    found = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar()
    return int(found or 0)


def _refuse_newer(found: int, url: str) -> None:
    if found > LATEST_SCHEMA_VERSION:
        raise RegistryError(
            f"the registry at {url} has schema version {found}, newer than this resnetkit "
            f"understands ({LATEST_SCHEMA_VERSION}); upgrade resnetkit to open it"
        )


def migrate(
    engine: Engine,
    url: str,
    *,
    target: int = LATEST_SCHEMA_VERSION,
) -> int:
    """Bring the store up to ``target``; returns the schema version found before.

    Raises:
        RegistryError: when the store's schema is newer than this code.
    """
    with engine.connect() as conn:
        found = schema_version(conn)
    _refuse_newer(found, url)
    if found >= target:
        return found
    with engine.connect() as conn:
        conn.execution_options(resnetkit_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # Two processes creating the same fresh store must not both run the DDL.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
            current = schema_version(conn)
            _refuse_newer(current, url)
            for number in range(current + 1, target + 1):
                MIGRATIONS[number - 1](conn)
                conn.execute(sa.insert(schema_table).values(version=number, applied_at=utc_now()))
    return found
