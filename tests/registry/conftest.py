"""Registry fixtures: every store-level test runs on SQLite and on a real PostgreSQL server.

The PostgreSQL cluster is created once per session with the Debian binaries
(``/usr/lib/postgresql/*/bin``) in a temp directory, listening on 127.0.0.1 at a free port
with trust authentication, and stopped at the end. initdb refuses to run as root, so as
root the cluster runs as the ``postgres`` system user. Without the binaries the PostgreSQL
variant is skipped, except under CI (env ``CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnetkit.registry import RegistryStore, open_registry
from tests.registry.rundirs import make_run_dir

BACKENDS = ("sqlite", "postgresql")


def _pg_bindir() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster; each test gets a fresh database in it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="resnetkit-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, user="postgres", group="postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        cmd = [*self.prefix, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}\n{tail}")

    def start(self) -> None:
        """initdb and start the server, waiting until it accepts connections."""
        initdb = str(self.bindir / "initdb")
        self._run(initdb, "-N", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
            "-c fsync=off -c max_connections=200"
        )
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(
            pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        """Stop the server and remove its files."""
        try:
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty registry database; returns its SQLAlchemy URL.

        Each test gets its own schema (much faster than CREATE DATABASE), selected through
        the connection's ``search_path`` exactly as a user's dedicated database would be.
        """
        import psycopg

        name = f"rk_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return (
            f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
            f"?options=-csearch_path%3D{name}"
        )

    def url(self, database: str) -> str:
        """A libpq URL of one database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (skipped, or failed under CI, if absent)."""
    bindir = _pg_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL binaries not found in /usr/lib/postgresql/*/bin "
            "(install the Debian package 'postgresql', e.g. via `make system-deps`)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test."""
    return str(request.param)


@pytest.fixture
def registry_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty registry database on the backend under test."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def artifact_root(tmp_path: Path) -> Path:
    """Where the test store keeps its artifact files."""
    return tmp_path / "artifacts"


@pytest.fixture
def store(registry_url: str, artifact_root: Path) -> Iterator[RegistryStore]:
    """An open, empty registry on the backend under test."""
    with open_registry(registry_url, artifact_root) as opened:
        yield opened


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A small real run directory."""
    return make_run_dir(tmp_path / "run0", seed=0)
