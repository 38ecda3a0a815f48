"""Database connections for the registry: SQLite (WAL, busy timeout) or PostgreSQL.

Every write runs in :func:`run_write`, which retries the whole transaction when the
database reports a transient conflict (a locked SQLite file, a PostgreSQL serialisation
failure or deadlock, or a unique-key race between two writers). On SQLite a write
transaction starts with ``BEGIN IMMEDIATE`` so that two writers never both hold a read
lock and then deadlock upgrading it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine

from resnetkit.errors import ConfigError, RegistryError

__all__ = ["create_registry_engine", "display_url", "read_tx", "run_write", "sqlite_path"]

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
MAX_WRITE_ATTEMPTS = 12
_TRANSIENT_PG_STATES = {"40001", "40P01", "55P03"}


def _parse_url(url: str) -> URL:
    try:
        return sa.make_url(url)
    except (sa_exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        raise ConfigError(
            f"invalid registry URL {url!r}: expected sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        ) from exc


def display_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for another backend."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise ConfigError("an in-memory SQLite database cannot hold a registry; give a file")
    return Path(parsed.database)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("resnetkit_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_registry_engine(url: str) -> Engine:
    """An engine for ``url``, configured for concurrent use by several processes.

    Raises:
        ConfigError: for a malformed URL, an unsupported backend or a missing driver.
    """
    parsed = _parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    if backend != "postgresql":
        raise ConfigError(f"unsupported registry backend {backend!r}: use sqlite or postgresql")
    try:
        return sa.create_engine(parsed, pool_pre_ping=True)
    except ImportError as exc:
        raise ConfigError(
            "the PostgreSQL driver is not installed: pip install 'resnetkit[postgres]'"
        ) from exc


def _is_transient(exc: sa_exc.DBAPIError) -> bool:
    if isinstance(exc, sa_exc.IntegrityError):
        return True  # a unique-key race; the retry re-reads and takes the next number
    state = getattr(exc.orig, "sqlstate", None)
    if state in _TRANSIENT_PG_STATES:
        return True
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read transaction (one consistent snapshot on PostgreSQL and SQLite WAL)."""
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    except sa_exc.DBAPIError as exc:
        raise RegistryError(f"registry database error: {exc.orig}") from exc


def run_write(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in a write transaction, retrying it whole on transient conflicts.

    Raises:
        RegistryError: when the database keeps failing or fails for good.
    """
    for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
        try:
            with engine.connect() as conn:
                conn.execution_options(resnetkit_write=True)
                with conn.begin():
                    return work(conn)
        except (sa_exc.OperationalError, sa_exc.IntegrityError) as exc:
            if attempt == MAX_WRITE_ATTEMPTS or not _is_transient(exc):
                raise RegistryError(
                    f"registry write failed after {attempt} attempt(s): {exc.orig}"
                ) from exc
            time.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 6)))
        except sa_exc.DBAPIError as exc:
            raise RegistryError(f"registry database error: {exc.orig}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
