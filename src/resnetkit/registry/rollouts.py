"""Rollout state in the registry database, so that every replica follows the same rollout.

A rollout moves a model from its stable version to a canary version in steps. Its row holds
the state (``progressing``, ``promoted``, ``rolled_back``, ``aborted``), the current step and
canary weight, the analysis settings and the last checks; ``revision`` increases with every
change, so an update made on stale state is refused instead of overwriting a newer one. Each
replica writes what it measured per step (``rollout_stats``); one replica at a time holds the
analysis lease (``rollout_leases``); every step, promotion and rollback is appended to
``rollout_events``. Promotion moves the alias in the same transaction as the state, through
the registry's audited alias move.

This module stores and reads; the analysis itself is the server's (``serve.rollout``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from resnetkit.errors import RegistryError
from resnetkit.registry import aliases as alias_ops
from resnetkit.registry import queries
from resnetkit.registry.engine import read_tx, run_write
from resnetkit.registry.migrations import (
    registered_models,
    rollout_events,
    rollout_leases,
    rollout_stats,
    rollouts,
    utc_now,
)
from resnetkit.registry.store import RegistryStore

__all__ = [
    "ACTIVE",
    "FINISHED",
    "RolloutConflict",
    "RolloutEvent",
    "RolloutRecord",
    "RolloutRefused",
    "acquire_lease",
    "active_rollout",
    "latest_rollout",
    "list_rollout_events",
    "read_stats",
    "release_lease",
    "start_rollout",
    "update_rollout",
    "write_stats",
]

ACTIVE = "progressing"
FINISHED = ("promoted", "rolled_back", "aborted")


class RolloutConflict(RegistryError):
    """The rollout changed since it was read (another replica acted first); read it again."""


class RolloutRefused(RegistryError):
    """A rollout that cannot start in the model's current state: one is already progressing,
    or the canary is the stable version itself (the server answers 409)."""


@dataclasses.dataclass(frozen=True)
class RolloutRecord:
    """One rollout as stored."""

    id: int
    name: str
    stable_version: int
    canary_version: int
    state: str
    step: int
    canary_weight: float
    config: dict[str, Any]
    failures: int
    reason: str
    checks: list[dict[str, Any]]
    created_by: str
    created_at: str
    updated_at: str
    step_started_at: str
    finished_at: str | None
    revision: int

    @property
    def active(self) -> bool:
        """Whether the rollout is still progressing."""
        return self.state == ACTIVE

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the API."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RolloutEvent:
    """One entry of a rollout's audit log."""

    id: int
    rollout_id: int
    kind: str
    actor: str
    created_at: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the API."""
        return dataclasses.asdict(self)


def _record(row: Any, name: str) -> RolloutRecord:
    return RolloutRecord(
        id=row.id, name=name, stable_version=row.stable_version,
        canary_version=row.canary_version, state=row.state, step=row.step,
        canary_weight=float(row.canary_weight), config=json.loads(row.config),
        failures=row.failures, reason=row.reason, checks=json.loads(row.checks),
        created_by=row.created_by, created_at=row.created_at, updated_at=row.updated_at,
        step_started_at=row.step_started_at, finished_at=row.finished_at,
        revision=row.revision,
    )  # fmt: skip


def _latest(conn: Connection, name: str, *, only_active: bool) -> RolloutRecord | None:
    model_id = queries.find_model_id(conn, name)
    if model_id is None:
        return None
    query = sa.select(rollouts).where(rollouts.c.model_id == model_id)
    if only_active:
        query = query.where(rollouts.c.state == ACTIVE)
    row = conn.execute(query.order_by(rollouts.c.id.desc()).limit(1)).first()
    return None if row is None else _record(row, name)


def active_rollout(store: RegistryStore, name: str) -> RolloutRecord | None:
    """The progressing rollout of ``name``, if there is one."""
    with read_tx(store.engine) as conn:
        return _latest(conn, name, only_active=True)


def latest_rollout(store: RegistryStore, name: str) -> RolloutRecord | None:
    """The most recent rollout of ``name`` (progressing or finished)."""
    with read_tx(store.engine) as conn:
        return _latest(conn, name, only_active=False)


def _event(conn: Connection, rollout_id: int, kind: str, actor: str, detail: Any) -> None:
    conn.execute(
        sa.insert(rollout_events).values(
            rollout_id=rollout_id, kind=kind, actor=actor, created_at=utc_now(),
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )  # fmt: skip


def start_rollout(
    store: RegistryStore,
    name: str,
    *,
    stable_version: int,
    canary_version: int,
    config: dict[str, Any],
    first_weight: float,
    actor: str,
) -> RolloutRecord:
    """Record a new rollout of ``name`` from ``stable_version`` to ``canary_version``.

    Raises:
        RolloutRefused: the versions are the same, or a rollout of the model is already
            progressing.
        RegistryError: a version does not exist.
    """
    if stable_version == canary_version:
        raise RolloutRefused(f"{name}:{canary_version} is already the stable version")

    def work(conn: Connection) -> RolloutRecord:
        model_id = queries.require_model_id(conn, name, lock=True)
        for number in (stable_version, canary_version):
            alias_ops.version_id_of(conn, model_id, name, number)
        running = _latest(conn, name, only_active=True)
        if running is not None:
            raise RolloutRefused(
                f"{name} already has a rollout in progress ({name}:{running.stable_version} -> "
                f"{name}:{running.canary_version}); promote or abort it first"
            )
        now = utc_now()
        result = conn.execute(
            sa.insert(rollouts).values(
                model_id=model_id, stable_version=stable_version, canary_version=canary_version,
                state=ACTIVE, step=0, canary_weight=first_weight,
                config=json.dumps(config, sort_keys=True), failures=0, reason="started",
                checks="[]", created_by=actor, created_at=now, updated_at=now,
                step_started_at=now, finished_at=None, revision=1,
            )
        )  # fmt: skip
        rollout_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        _event(conn, rollout_id, "start", actor, {"stable": stable_version,
               "canary": canary_version, "weight": first_weight, "config": config})  # fmt: skip
        found = _latest(conn, name, only_active=True)
        assert found is not None
        return found

    return run_write(store.engine, work)


def update_rollout(
    store: RegistryStore,
    record: RolloutRecord,
    *,
    changes: dict[str, Any],
    event: tuple[str, dict[str, Any]] | None,
    actor: str,
    move_alias: tuple[str, int, str] | None = None,
) -> RolloutRecord:
    """Apply ``changes`` to the rollout as read in ``record``, log ``event``, and optionally
    move an alias (``(alias, version, reason)``), all in one transaction.

    Raises:
        RolloutConflict: the rollout changed since ``record`` was read.
    """
    values = dict(changes)
    for key in ("config", "checks"):
        if key in values:
            values[key] = json.dumps(values[key], sort_keys=True, default=str)
    values.update(updated_at=utc_now(), revision=record.revision + 1)

    def work(conn: Connection) -> RolloutRecord:
        model_id = queries.require_model_id(conn, record.name, lock=True)
        done = conn.execute(
            sa.update(rollouts)
            .where(rollouts.c.id == record.id, rollouts.c.revision == record.revision)
            .values(**values)
        )
        if done.rowcount != 1:
            raise RolloutConflict(f"the rollout of {record.name} changed meanwhile")
        if event is not None:
            _event(conn, record.id, event[0], actor, event[1])
        if move_alias is not None:
            alias, version, reason = move_alias
            alias_ops.move_alias(
                conn, model_id, record.name, alias, version, kind="set", actor=actor,
                reason=reason,
            )  # fmt: skip
        row = conn.execute(sa.select(rollouts).where(rollouts.c.id == record.id)).one()
        return _record(row, record.name)

    return run_write(store.engine, work)


def list_rollout_events(store: RegistryStore, rollout_id: int) -> list[RolloutEvent]:
    """A rollout's audit log, oldest first."""
    with read_tx(store.engine) as conn:
        rows = conn.execute(
            sa.select(rollout_events)
            .where(rollout_events.c.rollout_id == rollout_id)
            .order_by(rollout_events.c.id)
        )
        return [
            RolloutEvent(r.id, r.rollout_id, r.kind, r.actor, r.created_at, json.loads(r.detail))
            for r in rows
        ]


def write_stats(
    store: RegistryStore, rollout_id: int, replica: str, step: int, data: dict[str, Any]
) -> None:
    """Store what ``replica`` measured in ``step`` so far (cumulative; replaces its row)."""
    text = json.dumps(data, sort_keys=True)

    def work(conn: Connection) -> None:
        key = (
            (rollout_stats.c.rollout_id == rollout_id)
            & (rollout_stats.c.replica == replica)
            & (rollout_stats.c.step == step)
        )
        done = conn.execute(
            sa.update(rollout_stats).where(key).values(data=text, updated_at=utc_now())
        )
        if done.rowcount == 0:
            conn.execute(
                sa.insert(rollout_stats).values(
                    rollout_id=rollout_id, replica=replica, step=step, data=text,
                    updated_at=utc_now(),
                )
            )  # fmt: skip

    run_write(store.engine, work)


def read_stats(store: RegistryStore, rollout_id: int, step: int) -> list[dict[str, Any]]:
    """What every replica measured in ``step``, one dict each."""
    with read_tx(store.engine) as conn:
        rows = conn.execute(
            sa.select(rollout_stats.c.data).where(
                rollout_stats.c.rollout_id == rollout_id, rollout_stats.c.step == step
            )
        )
        return [json.loads(r.data) for r in rows]


def acquire_lease(store: RegistryStore, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the analysis lease of ``name`` for ``ttl_s`` seconds.

    True when ``holder`` holds it now: it had it, or the last holder's lease expired (a
    killed replica's lease runs out and another replica takes over).
    """
    now = time.time()

    def work(conn: Connection) -> bool:
        model_id = queries.require_model_id(conn, name, lock=True)
        row = conn.execute(
            sa.select(rollout_leases).where(rollout_leases.c.model_id == model_id)
        ).first()
        if row is None:
            conn.execute(
                sa.insert(rollout_leases).values(
                    model_id=model_id, holder=holder, expires_at=now + ttl_s
                )
            )
            return True
        if row.holder != holder and row.expires_at > now:
            return False
        conn.execute(
            sa.update(rollout_leases)
            .where(rollout_leases.c.model_id == model_id)
            .values(holder=holder, expires_at=now + ttl_s)
        )
        return True

    return run_write(store.engine, work)


def release_lease(store: RegistryStore, name: str, holder: str) -> None:
    """Give the lease back (on shutdown), so another replica need not wait for it to expire."""

    def work(conn: Connection) -> None:
        model_id = queries.find_model_id(conn, name)
        if model_id is not None:
            conn.execute(
                sa.delete(rollout_leases).where(
                    rollout_leases.c.model_id == model_id, rollout_leases.c.holder == holder
                )
            )

    run_write(store.engine, work)


def model_names_with_rollouts(store: RegistryStore) -> list[str]:
    """Names of models that have any rollout (for listings)."""
    with read_tx(store.engine) as conn:
        rows = conn.execute(
            sa.select(registered_models.c.name)
            .join(rollouts, rollouts.c.model_id == registered_models.c.id)
            .distinct()
        )
        return sorted(r.name for r in rows)
