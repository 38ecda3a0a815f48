"""Game-day fixtures: a PostgreSQL cluster of the module's own (so it can be stopped and
frozen without touching the session's shared one), its processes, and small tmpfs mounts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.conftest import PostgresServer, _pg_bindir


class Postgres(PostgresServer):
    """A throwaway cluster that a test may stop, restart, freeze (SIGSTOP) and thaw."""

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, ...)."""
        root = self.postmaster_pid()
        found = [root]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                    found.append(int(stat.parent.name))
        return found

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the cluster stopped (SIGSTOP) for the block: a hung database
        whose kernel still accepts connections and bytes. A backend that exits between
        the listing and its signal (a client's connection closing) needs no stopping."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The cluster shut down (fast) for the block, started again after it."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        try:
            yield
        finally:
            self.start_again()

    def start_again(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
            str(self.base / "server.log"), "-w", "-t", "60", "-o", options, "start",
        )  # fmt: skip


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster for this module only (skipped, or failed under CI, if absent)."""
    bindir = _pg_bindir()
    if bindir is None:
        reason = "PostgreSQL binaries not found in /usr/lib/postgresql/*/bin"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = Postgres(bindir)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            for pid in server.pids():
                os.kill(pid, signal.SIGCONT)
        server.stop()


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` KiB mounted at ``path`` for the block: a disk that fills up.

    Skips the test, saying why, only where the kernel refuses the mount (no root, or a
    container without CAP_SYS_ADMIN).
    """
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Fill the file system of ``path`` to the last byte."""
    with open(path / ".filler", "wb", buffering=0) as out:
        for size in (1 << 16, 4096, 1):  # the last few blocks, then the last bytes
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
