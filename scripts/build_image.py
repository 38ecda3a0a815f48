"""Build resnetkit's container images without a daemon: ``make image`` (``IMAGE=full`` too).

A Debian root filesystem made by ``mmdebstrap`` from Debian's packages (only Python and the
C++ runtime, unpacked: no shell, no package manager, no apt lists), resnetkit and its Python
dependencies installed into it, committed by ``buildah`` to an OCI archive::

    python scripts/build_image.py serve      # dist/resnetkit-serve-<version>.oci.tar
    python scripts/build_image.py full       # with PyTorch (CPU): training and pipeline steps

``serve`` is the torch-free serving install (the plain ``pip install resnetkit`` with the
PostgreSQL driver), less the packages only plots and reports use; ``full`` adds the ``train``
and ``mnist`` extras. Both run as uid 10001 with ``resnetkit`` (and, in ``full``, ``torchrun``)
on the ``PATH``, write no bytecode (the root filesystem may be read-only) and take the model
and every setting from their arguments and ``RESNETKIT_*`` variables. Load an archive with
``podman load -i FILE`` or ``skopeo copy oci-archive:FILE docker://REGISTRY/...``.

Needs root (or ``mmdebstrap``'s unshare mode), ``mmdebstrap`` and ``buildah`` (``make
system-deps``), and network access to a Debian mirror and to PyPI.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = "bookworm"  # Debian 12: Python 3.11, the version the wheels are built for
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PYTHON = "/usr/bin/python3.11"
SITE = "/opt/resnetkit"  # the Python packages (pip --target)
UID = 10001
USER = "resnetkit"
# Unpacked, not configured: the interpreter, its standard library, the C++ runtime that
# ONNX Runtime and gRPC link against, and /etc/services for name lookups.
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "netbase")
# Installed by pip as dependencies of the plain install but never imported when serving
# (tests/deploy/test_image.py serves from the image to prove it): plotting (matplotlib and
# its dependencies), SciPy (drift detection's tests are numpy: monitor/stats.py), the onnx
# package (the server reads ONNX metadata from the wire format: onnxio.check_onnx_file)
# and ONNX Runtime's model tools (sympy).
SERVE_PRUNED = (
    "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing",
    "python-dateutil", "six", "scipy", "onnx", "sympy", "mpmath",
)  # fmt: skip
# Of the Debian root filesystem, what no program in the image reads.
DEBIAN_PRUNED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                 "usr/share/lintian", "var/cache/apt", "var/lib/apt/lists", "var/log")  # fmt: skip


class BuildError(Exception):
    """A step that failed, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class Target:
    """What one image holds."""

    name: str
    requirements: tuple[str, ...]  # pip arguments after the resnetkit wheel's extras
    extras: str
    pruned: tuple[str, ...]
    description: str


TARGETS = {
    "serve": Target(
        "serve", (), "postgres", SERVE_PRUNED,
        "resnetkit serving runtime: ONNX Runtime, KServe V2 over REST and gRPC, no PyTorch",
    ),
    "full": Target(
        "full", ("torch==2.13.0",), "train,postgres,mnist", (),
        "resnetkit with PyTorch (CPU): training, export, compression and pipeline steps",
    ),
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS), help="which image")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (dist/)")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror")
    args = parser.parse_args(argv)
    try:
        image = build(TARGETS[args.target], args.out, mirror=args.mirror)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"{image.archive}: {image.size_bytes / 1e6:.0f} MB uncompressed, "
          f"{image.archive.stat().st_size / 1e6:.0f} MB archive")  # fmt: skip
    return 0


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """An image archive and what the build recorded about it (also written beside it)."""

    archive: Path
    size_bytes: int  # the root filesystem's files, uncompressed
    packages: dict[str, str]  # Python distributions in the image, name -> version
    manifest: dict[str, object]


def version() -> str:
    """resnetkit's version, as ``pyproject.toml`` gives it."""
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def build(target: Target, out: Path, *, mirror: str = DEFAULT_MIRROR) -> BuiltImage:
    """Build ``target`` into ``out/resnetkit-<name>-<version>.oci.tar`` (written atomically).

    Raises:
        BuildError: a missing tool, no network, a failed step; nothing is left at the output.
    """
    tools = [shutil.which(tool) for tool in ("mmdebstrap", "buildah")]
    if not all(tools):
        raise BuildError("building images needs mmdebstrap and buildah: run `make system-deps` "
                         "(apt-get install mmdebstrap buildah)")  # fmt: skip
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create {out}: {exc.strerror}") from exc
    tag = f"resnetkit-{target.name}:{version()}"
    archive = out / f"resnetkit-{target.name}-{version()}.oci.tar"
    with tempfile.TemporaryDirectory(prefix=f"resnetkit-image-{target.name}-") as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs"
        steps = Steps(5)
        with steps("Debian root filesystem (mmdebstrap)"):
            debian_rootfs(rootfs, mirror)
        with steps("resnetkit and its Python packages (pip)"):
            packages = install_python(rootfs, work, target)
        with steps("user, bytecode and pruning"):
            finish_rootfs(rootfs)
        size = tree_size(rootfs)
        manifest: dict[str, object] = {
            "image": tag,
            "target": target.name,
            "size_bytes": size,
            "debian": {"suite": SUITE, "packages": list(DEBIAN_PACKAGES)},
            "python_packages": packages,
            "revision": git_revision(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        with steps("commit (buildah)"):
            partial = work / archive.name
            commit(rootfs, partial, tag, target, manifest)
        with steps(f"write {archive}"):
            shutil.move(partial, archive.with_name(archive.name + ".part"))
            os.replace(archive.with_name(archive.name + ".part"), archive)
            (archive.with_suffix(".json")).write_text(json.dumps(manifest, indent=2) + "\n")
    return BuiltImage(archive, size, packages, manifest)


class Steps:
    """Numbered steps with their wall time, on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def __call__(self, title: str) -> _Step:
        self.done += 1
        return _Step(f"[{self.done}/{self.total}] {title}")


class _Step:
    def __init__(self, title: str) -> None:
        self.title = title

    def __enter__(self) -> None:
        print(f"{self.title} ...", file=sys.stderr, flush=True)
        self.start = time.monotonic()

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            print(f"    done in {time.monotonic() - self.start:.0f} s", file=sys.stderr)


def run(cmd: Sequence[str | os.PathLike[str]], what: str, **kwargs: object) -> str:
    """Run ``cmd``; a failure is a :class:`BuildError` with its last lines of output."""
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs
    )  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return str(proc.stdout)


def debian_rootfs(rootfs: Path, mirror: str) -> None:
    """Unpack Python and its libraries from Debian into ``rootfs`` (``extract``: no
    maintainer scripts run, so no shell or dpkg is needed in, or left in, the image)."""
    include = ",".join(DEBIAN_PACKAGES)
    try:
        run(["mmdebstrap", "--variant=extract", f"--include={include}", "--mode=auto",
             "--quiet", SUITE, rootfs, mirror], "mmdebstrap")  # fmt: skip
    except BuildError as exc:
        raise BuildError(f"{exc}\n(is {mirror} reachable? --mirror picks another)") from None


def install_python(rootfs: Path, work: Path, target: Target) -> dict[str, str]:
    """resnetkit's wheel with ``target``'s extras and requirements into ``rootfs/SITE``;
    returns the installed distributions, less the pruned ones."""
    wheels = work / "wheel"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", "--no-deps", "--quiet", "-w", wheels, ROOT], "building resnetkit's wheel")
    (wheel,) = wheels.glob("resnetkit-*.whl")
    site = rootfs / SITE.lstrip("/")
    run([*pip, "install", "--quiet", "--no-warn-script-location", "--target", site,
         f"{wheel}[{target.extras}]", *target.requirements], "pip install")  # fmt: skip
    for name in target.pruned:
        remove_distribution(site, name)
    for tests in [p for p in site.rglob("tests") if p.is_dir()]:
        shutil.rmtree(tests, ignore_errors=True)  # test suites of packages: never imported
    for script in (site / "bin").iterdir():  # console scripts: the image's interpreter
        text = script.read_bytes()
        if text.startswith(b"#!"):
            script.write_bytes(b"#!" + PYTHON.encode() + text[text.index(b"\n") :])
    return distributions(site)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def distributions(site: Path) -> dict[str, str]:
    """``{name: version}`` of the distributions installed in ``site``."""
    found = {}
    for info in site.glob("*.dist-info"):
        name, _, rest = info.name.removesuffix(".dist-info").partition("-")
        found[_normal(name)] = rest
    return dict(sorted(found.items()))


def remove_distribution(site: Path, name: str) -> None:
    """Delete one distribution's files by its ``RECORD`` (absent: nothing to do)."""
    for info in site.glob("*.dist-info"):
        if _normal(info.name.removesuffix(".dist-info").partition("-")[0]) != _normal(name):
            continue
        for line in (info / "RECORD").read_text().splitlines():
            path = site / line.split(",")[0]
            if path.resolve().is_relative_to(site.resolve()) and path.is_file():
                path.unlink()
        shutil.rmtree(info, ignore_errors=True)
    for folder in sorted((p for p in site.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()  # the package folders the removed files leave empty


def finish_rootfs(rootfs: Path) -> None:
    """The unprivileged user and its home, ``/tmp``, the standard library's bytecode
    (compiled once here: the image's root filesystem may be read-only), and no docs."""
    for relative in DEBIAN_PRUNED:
        shutil.rmtree(rootfs / relative, ignore_errors=True)
    etc = rootfs / "etc"
    etc.mkdir(exist_ok=True)
    home = f"/home/{USER}"
    (etc / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n{USER}:x:{UID}:{UID}::{home}:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\n{USER}:x:{UID}:\n")
    (rootfs / home.lstrip("/")).mkdir(parents=True, exist_ok=True)
    os.chown(rootfs / home.lstrip("/"), UID, UID)
    tmp = rootfs / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    # pip compiled the site packages already (same bytecode format: CPython 3.11).
    run(["chroot", rootfs, PYTHON, "-m", "compileall", "-q", "-x", "test", "/usr/lib/python3.11"],
        "compiling the standard library")  # fmt: skip


def tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root`` (hard links once)."""
    seen, total = set(), 0
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_file() and not path.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def git_revision() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    return proc.stdout.strip() or "unknown"


def buildah(*args: str | os.PathLike[str]) -> str:
    """``buildah`` with this build's storage driver (``$STORAGE_DRIVER``, else ``vfs``, which
    works inside containers and on every filesystem)."""
    driver = os.environ.get("STORAGE_DRIVER", "vfs")
    return run(["buildah", "--storage-driver", driver, *args], f"buildah {args[0]}").strip()


def commit(
    rootfs: Path, archive: Path, tag: str, target: Target, manifest: dict[str, object]
) -> None:
    """``rootfs`` as one layer, with the image's configuration, to an OCI archive."""
    container = buildah("from", "scratch")
    try:
        buildah("copy", container, f"{rootfs}/", "/")
        labels = {
            "org.opencontainers.image.title": f"resnetkit-{target.name}",
            "org.opencontainers.image.description": target.description,
            "org.opencontainers.image.version": version(),
            "org.opencontainers.image.revision": str(manifest["revision"]),
            "org.opencontainers.image.created": str(manifest["created"]),
            "org.opencontainers.image.licenses": "MIT",
        }
        config = [
            "--user", f"{UID}:{UID}", "--workingdir", f"/home/{USER}",
            "--entrypoint", json.dumps([f"{SITE}/bin/resnetkit"]),
            "--cmd", json.dumps(["--help"]),
            "--env", f"PATH={SITE}/bin:/usr/local/bin:/usr/bin:/bin",
            "--env", f"PYTHONPATH={SITE}", "--env", "PYTHONDONTWRITEBYTECODE=1",
            "--env", "PYTHONUNBUFFERED=1", "--env", f"HOME=/home/{USER}",
            "--port", "8000/tcp", "--port", "8001/tcp",
        ]  # fmt: skip
        for key, value in labels.items():
            config += ["--label", f"{key}={value}"]
        buildah("config", *config, container)
        buildah("commit", "--quiet", "--format", "oci", container, f"oci-archive:{archive}:{tag}")
    finally:
        subprocess.run(["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs"),
                        "rm", container], capture_output=True, check=False)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
