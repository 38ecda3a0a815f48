"""Database connections for the registry: SQLite (WAL, busy timeout) or PostgreSQL.

Every write runs in :func:`run_write`, which retries the whole transaction when the
database reports a transient conflict (a PostgreSQL serialisation failure or deadlock, or a
unique-key race between two writers). On SQLite a write transaction starts with
``BEGIN IMMEDIATE`` so that two writers never both hold a read lock and then deadlock
upgrading it.

Every database call is bounded by one timeout (``timeout_s``, by default
``$RESNETKIT_REGISTRY_TIMEOUT_S`` or 5 s), so that no request, command or shutdown hangs on a
database that is gone, hung or locked:

* SQLite: the busy timeout (a writer waits that long for another process's write lock);
* PostgreSQL: ``connect_timeout``, ``statement_timeout`` and ``lock_timeout`` on the server,
  and a client-side wait deadline a little longer, for a server that accepts the connection
  but never answers (a stopped or hung process: its kernel still acknowledges the bytes).

A database that cannot be reached, does not answer in time or stays locked is a
:class:`~resnetkit.errors.RegistryUnavailable` (one line; HTTP 503), raised at the boundary
by an SQLAlchemy ``handle_error`` hook so that every caller gets it, whatever it catches.
"""

from __future__ import annotations

import functools
import math
import os
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

from resnetkit.errors import ConfigError, RegistryError, RegistryUnavailable

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "create_registry_engine",
    "display_url",
    "read_tx",
    "registry_timeout_s",
    "run_write",
    "sqlite_path",
]

T = TypeVar("T")

TIMEOUT_ENV = "RESNETKIT_REGISTRY_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 5.0
MAX_WRITE_ATTEMPTS = 12
# The client gives a live server this much longer than its statement_timeout, so that a
# slow statement is cancelled cleanly by the server and only a hung server is cut off here.
_CLIENT_GRACE_S = 2.0
_TRANSIENT_PG_STATES = {"40001", "40P01", "55P03"}
# Server states that mean "the database is not there": connection exceptions (08...),
# an operator intervention (57...: shutdown, cancelled by statement_timeout), a lock wait
# past lock_timeout (55P03, once the write's retries are spent).
_UNAVAILABLE_PG_CLASSES = ("08", "57")


def registry_timeout_s(value: float | None = None) -> float:
    """The bound on one database call: ``value``, else ``$RESNETKIT_REGISTRY_TIMEOUT_S``, else 5.

    Raises:
        ConfigError: a value that is not a positive number of seconds.
    """
    raw: object = value if value is not None else os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    try:
        timeout = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        timeout = math.nan
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}")
    return timeout


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


def _configure_sqlite(engine: Engine, timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {round(timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("resnetkit_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_registry_engine(url: str, timeout_s: float | None = None) -> Engine:
    """An engine for ``url``, configured for concurrent use by several processes.

    Args:
        url: the SQLAlchemy URL.
        timeout_s: the bound on one database call (see :func:`registry_timeout_s`).

    Raises:
        ConfigError: for a malformed URL, an unsupported backend, a missing driver or a
            timeout that is not a positive number.
    """
    parsed = _parse_url(url)
    timeout = registry_timeout_s(timeout_s)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": timeout})
        _configure_sqlite(engine, timeout)
    elif backend == "postgresql":
        engine = _postgres_engine(parsed, timeout)
    else:
        raise ConfigError(f"unsupported registry backend {backend!r}: use sqlite or postgresql")
    _translate_unavailable(engine, display_url(url), timeout)
    engine.resnetkit_timeout_s = timeout  # type: ignore[attr-defined]
    return engine


def _postgres_engine(parsed: URL, timeout_s: float) -> Engine:
    try:
        connection_class = _deadline_connection_class()
    except ImportError as exc:
        raise ConfigError(
            "the PostgreSQL driver is not installed: pip install 'resnetkit[postgres]'"
        ) from exc
    ms = round(timeout_s * 1000)
    options = " ".join(
        part
        for part in (
            str(parsed.query.get("options") or ""),
            f"-c statement_timeout={ms} -c lock_timeout={ms}",
        )
        if part
    )
    connect_args = {"connect_timeout": max(2, math.ceil(timeout_s)), "options": options}
    engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        conn = connection_class.connect(*cargs, **cparams)
        conn.resnetkit_wait_s = timeout_s + _CLIENT_GRACE_S
        return conn

    return engine


@functools.cache
def _deadline_connection_class() -> type[Any]:
    """A psycopg connection whose every wait on the server ends after ``resnetkit_wait_s``.

    psycopg waits on the socket without a bound; a stopped server's kernel still accepts
    the bytes, so neither TCP nor the server's own timeouts end that wait. After the
    deadline the connection is closed (it is mid-statement) and the wait fails as a lost
    connection would.
    """
    import psycopg
    from psycopg import errors as pg_errors

    class DeadlineConnection(psycopg.Connection):
        resnetkit_wait_s: float | None = None

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            bound = timeout if timeout is not None else self.resnetkit_wait_s
            try:
                return super().wait(gen, interval=interval, timeout=bound)
            except pg_errors._WaitTimeout as exc:
                self.pgconn.finish()
                raise psycopg.OperationalError(
                    f"the server did not answer within {bound:g} s (hung or stopped)"
                ) from exc

    return DeadlineConnection


def _unavailable_reason(exc: BaseException | None, timeout_s: float) -> str | None:
    """Why ``exc`` (a driver error) means the database is unavailable, or None."""
    if exc is None:
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    module = type(exc).__module__
    if module.startswith("sqlite3"):
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return (
                f"the database is locked by another writer (waited {timeout_s:g} s for its "
                f"write lock; set {TIMEOUT_ENV} to wait longer)"
            )
        if "unable to open" in lowered or "disk i/o" in lowered:
            return text
        return None
    if not module.startswith("psycopg"):
        return None
    state = getattr(exc, "sqlstate", None)
    if state == "57014":
        return f"no answer within {timeout_s:g} s (statement timeout): {text}"
    if state is None or str(state).startswith(_UNAVAILABLE_PG_CLASSES):
        import psycopg

        return text if isinstance(exc, psycopg.OperationalError) else None
    return None


def _translate_unavailable(engine: Engine, where: str, timeout_s: float) -> None:
    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        if context.is_pre_ping:
            return  # the pool reconnects; a failure of that is reported by itself
        reason = _unavailable_reason(context.original_exception, timeout_s)
        if reason is None:
            return
        if type(context.original_exception).__module__.startswith("psycopg"):
            context.is_disconnect = True  # the connection may be mid-statement: drop it
        raise RegistryUnavailable(f"registry database {where} unavailable: {reason}")


def _engine_timeout(engine: Engine) -> float:
    timeout = getattr(engine, "resnetkit_timeout_s", None)
    return float(timeout) if timeout is not None else registry_timeout_s()


def _is_lock_wait(exc: sa_exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03"


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
    deadline = time.monotonic() + _engine_timeout(engine)
    for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
        try:
            with engine.connect() as conn:
                conn.execution_options(resnetkit_write=True)
                with conn.begin():
                    return work(conn)
        except (sa_exc.OperationalError, sa_exc.IntegrityError) as exc:
            if time.monotonic() > deadline and _is_lock_wait(exc):
                raise RegistryUnavailable(
                    f"registry write gave up after {attempt} attempt(s): a lock held by "
                    f"another writer ({exc.orig}); set {TIMEOUT_ENV} to wait longer"
                ) from exc
            if (
                attempt == MAX_WRITE_ATTEMPTS
                or time.monotonic() > deadline
                or not _is_transient(exc)
            ):
                raise RegistryError(
                    f"registry write failed after {attempt} attempt(s): {exc.orig}"
                ) from exc
            time.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 6)))
        except sa_exc.DBAPIError as exc:
            raise RegistryError(f"registry database error: {exc.orig}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
