"""Writing files so that a reader, or a crash, never sees half of one.

:func:`atomic_write` is the one way the package writes a file it keeps: a temp file beside
the target, fsync, rename; :func:`staged` builds an output that must pass a check before it
replaces the file at its path (an export and its parity check). :func:`check_output_file`
and :func:`check_output_dir` check an output path *before* the work that fills it starts,
so a wrong ``--out`` or ``-o`` fails in the first second with one clear line instead of
after minutes of training or exporting.

The checks try a write instead of trusting permission bits: root passes every
``os.access`` test, yet cannot create anything in ``/sys`` or ``/proc`` or on a read-only
mount. An ``OSError`` from creating the place of an output becomes a
:class:`~resnetkit.errors.ConfigError` naming the path and the reason, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from resnetkit.errors import ConfigError, StorageFull

__all__ = [
    "atomic_write",
    "check_output_dir",
    "check_output_file",
    "is_disk_full",
    "new_figure",
    "save_figure",
    "staged",
]

#: Resolution of every PNG plot the package writes.
FIGURE_DPI = 120


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename it over.

    A reader sees the old file or the new one, never half of one, even if the process is
    killed mid-write.

    Raises:
        StorageFull: the disk (or the quota) filled up on the way; the temp file is removed
            and the file at ``path`` is the old one.
        ConfigError: the folder cannot be created or written at all.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {_reason(exc)}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        full = isinstance(exc, Exception) and is_disk_full(exc, target.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise _storage_full(target) from exc
        raise


def _storage_full(target: Path) -> StorageFull:
    kept = "the previous file is unchanged" if target.exists() else "nothing was written"
    return StorageFull(
        f"cannot write {target}: no space left on its disk ({kept}); free space and retry"
    )


@contextlib.contextmanager
def staged(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden path beside ``path`` to build an output in, renamed to ``path`` only if the
    block succeeds: a file that fails a check after it was written (an export whose parity
    fails) never replaces the one at ``path``. Write the staged path with
    :func:`atomic_write`.

    Raises:
        StorageFull: the disk filled up in the block, naming ``path`` (not the hidden
            file); nothing is left beside it and a file already at ``path`` is unchanged.
    """
    target = Path(path)
    stage = target.with_name(f".{target.name}.{os.getpid()}.staged")
    try:
        yield stage
        os.replace(stage, target)
    except Exception as exc:
        if isinstance(exc, StorageFull) or is_disk_full(exc, target.parent):
            raise _storage_full(target) from exc
        raise
    finally:
        stage.unlink(missing_ok=True)


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Writers that wrap the OS error in their own (torch.save's "file write failed", ...) are
# recognised by the disk they wrote to having (almost) nothing left.
_NEARLY_FULL_BYTES = 64 * 1024


def is_disk_full(exc: BaseException, folder: str | os.PathLike[str]) -> bool:
    """Whether ``exc``, raised while writing in ``folder``, came from a full disk or quota."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _reason(exc: OSError) -> str:
    """``permission denied``, ``read-only file system``, ...: the OS's words, lower case."""
    return (exc.strerror or type(exc).__name__).lower()


def _probe_folder(folder: Path, path: Path, what: str) -> None:
    """Create and remove an empty folder in ``folder``: the one test root cannot pass by fiat."""
    try:
        probe = tempfile.mkdtemp(dir=folder, prefix=".resnetkit-probe-")
    except OSError as exc:
        where = " in it" if folder == path else f" in {folder}"
        raise ConfigError(f"{what} {path}: cannot create anything{where} ({_reason(exc)})") from exc
    os.rmdir(probe)


def _check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a writable folder."""
    base = _nearest_existing(path.parent if path.parent != Path("") else Path("."))
    if not base.is_dir():
        raise ConfigError(f"{what} {path}: {base} is a file, not a folder")
    _probe_folder(base, path, what)


def check_output_file(
    path: str | os.PathLike[str], *, what: str = "output file", suffix: str | None = None
) -> Path:
    """Check that ``path`` can be written as a file: not a folder, in a writable place.

    Missing parent folders are fine (they are created when the file is written).

    Raises:
        ConfigError: naming the path and what is wrong with it.
    """
    target = Path(path)
    if suffix is not None and target.suffix.lower() != suffix:
        raise ConfigError(f"{what} {target} should end in {suffix}")
    if target.is_dir():
        example = target / f"model{suffix or ''}"
        raise ConfigError(f"{what} {target} is a folder; give a file name, e.g. {example}")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{what} {target} exists and is not writable")
        return target
    _check_creatable(target, what)
    return target


def check_output_dir(path: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """Check that ``path`` can be used as an output folder: absent, or a writable folder.

    Raises:
        ConfigError: naming the path and what is wrong with it.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise ConfigError(f"{what} {target} is a file; give a folder")
        _probe_folder(target, target, what)
        return target
    _check_creatable(target, what)
    return target


def new_figure(width_in: float, height_in: float) -> Any:
    """A matplotlib ``Figure`` with its own Agg canvas: no pyplot, no global state, no display.

    matplotlib is imported here, on first use, so that importing this module stays cheap.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG atomically; returns the path."""
    target = Path(path)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=FIGURE_DPI))
    return target
