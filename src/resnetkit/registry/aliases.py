"""Alias moves, each appended to the audit log in the same transaction as the move.

Callers hold the model's row lock (``find_model_id(..., lock=True)``), so two moves of one
model's aliases are serialised and each event's ``from_version`` is the version the alias
really held just before.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from resnetkit.errors import RegistryError
from resnetkit.registry.migrations import alias_events, aliases, utc_now, versions
from resnetkit.registry.queries import alias_history
from resnetkit.registry.records import AliasEvent

__all__ = ["move_alias", "remove_alias", "rollback_target", "version_id_of"]


def version_id_of(conn: Connection, model_id: int, name: str, number: int) -> int:
    """The row id of version ``number`` of a model.

    Raises:
        RegistryError: when the model has no such version.
    """
    found = conn.execute(
        sa.select(versions.c.id).where(
            versions.c.model_id == model_id, versions.c.version == number
        )
    ).scalar()
    if found is None:
        raise RegistryError(f"{name} has no version {number}")
    return int(found)


def _current(conn: Connection, model_id: int, alias: str) -> int | None:
    found = conn.execute(
        sa.select(versions.c.version)
        .join(aliases, aliases.c.version_id == versions.c.id)
        .where(aliases.c.model_id == model_id, aliases.c.alias == alias)
    ).scalar()
    return None if found is None else int(found)


def _log(
    conn: Connection,
    model_id: int,
    alias: str,
    kind: str,
    moves: tuple[int | None, int | None],
    actor: str,
    reason: str,
) -> None:
    conn.execute(
        sa.insert(alias_events).values(
            model_id=model_id,
            alias=alias,
            kind=kind,
            from_version=moves[0],
            to_version=moves[1],
            actor=actor,
            created_at=utc_now(),
            reason=reason,
        )
    )


def move_alias(
    conn: Connection,
    model_id: int,
    name: str,
    alias: str,
    number: int,
    *,
    kind: str,
    actor: str,
    reason: str,
) -> bool:
    """Point ``alias`` at version ``number`` and log the move (the model row is locked).

    Returns:
        False when the alias already pointed at ``number``: nothing moved, nothing is logged.

    Raises:
        RegistryError: no such version, or an empty reason.
    """
    if not reason.strip():
        raise RegistryError(f"moving {name}@{alias} needs a reason for the audit log")
    target_id = version_id_of(conn, model_id, name, number)
    previous = _current(conn, model_id, alias)
    if previous == number:
        return False
    now = utc_now()
    if previous is None:
        conn.execute(
            sa.insert(aliases).values(
                model_id=model_id, alias=alias, version_id=target_id, updated_at=now
            )
        )
    else:
        conn.execute(
            sa.update(aliases)
            .where(aliases.c.model_id == model_id, aliases.c.alias == alias)
            .values(version_id=target_id, updated_at=now)
        )
    _log(conn, model_id, alias, kind, (previous, number), actor, reason)
    return True


def remove_alias(
    conn: Connection, model_id: int, name: str, alias: str, *, actor: str, reason: str
) -> None:
    """Delete an alias and log it (the model row is locked)."""
    if not reason.strip():
        raise RegistryError(f"removing {name}@{alias} needs a reason for the audit log")
    previous = _current(conn, model_id, alias)
    if previous is None:
        raise RegistryError(f"{name} has no alias {alias!r}")
    conn.execute(sa.delete(aliases).where(aliases.c.model_id == model_id, aliases.c.alias == alias))
    _log(conn, model_id, alias, "remove", (previous, None), actor, reason)


def rollback_target(conn: Connection, model_id: int, name: str, alias: str) -> int:
    """The version a rollback of ``alias`` goes back to.

    The log is replayed as a stack: a move pushes its target, a rollback pops, a removal
    clears it. Rolling back twice from A→B→C therefore lands on A, not back on C. Versions
    deleted since are skipped.

    Raises:
        RegistryError: when the alias has no earlier version to go back to.
    """
    stack: list[int] = []
    for entry in alias_history(conn, model_id, alias):
        if entry.kind == "remove":
            stack.clear()
        elif entry.kind == "rollback":
            while stack and stack[-1] != entry.to_version:
                stack.pop()
            if not stack and entry.to_version is not None:
                stack.append(entry.to_version)
        elif entry.to_version is not None:
            stack.append(entry.to_version)
    existing = set(
        conn.execute(sa.select(versions.c.version).where(versions.c.model_id == model_id)).scalars()
    )
    current = _current(conn, model_id, alias)
    if current is None:
        raise RegistryError(f"{name} has no alias {alias!r} to roll back")
    earlier = [v for v in stack[:-1] if v in existing and v != current]
    if not earlier:
        raise RegistryError(f"{name}@{alias} has no earlier version to roll back to")
    return earlier[-1]


def last_event(conn: Connection, model_id: int, alias: str) -> AliasEvent:
    """The most recent audit entry of an alias (after a move in this transaction)."""
    return alias_history(conn, model_id, alias)[-1]
