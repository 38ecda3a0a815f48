"""The model registry: registered models, immutable versions, aliases, artifacts.

:func:`open_registry` connects to a store (SQLite file or PostgreSQL), migrates its schema
and returns a :class:`RegistryStore`. Registration stores the files first (content
addressed, atomic) and then records the version, its artifacts and any alias in a single
transaction, so a registration killed at any point leaves either nothing visible or a
complete version; files it stored without recording are only garbage for ``gc``.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from resnetkit.contract import MODEL_WEIGHTS, ONNX_FILE
from resnetkit.errors import ConfigError, RegistryError
from resnetkit.registry import aliases as alias_ops
from resnetkit.registry import blessings as blessing_ops
from resnetkit.registry import queries
from resnetkit.registry.artifacts import ArtifactStore, StoredFile, sha256_file
from resnetkit.registry.card import render_card
from resnetkit.registry.engine import (
    create_registry_engine,
    display_url,
    read_tx,
    run_write,
    sqlite_path,
)
from resnetkit.registry.maintenance import collect_garbage, referenced_files, verify_files
from resnetkit.registry.migrations import (
    blessings,
    migrate,
    registered_models,
    settings,
    utc_now,
    version_artifacts,
    versions,
)
from resnetkit.registry.records import (
    AliasEvent,
    Blessing,
    BlessingRecord,
    GcReport,
    LoadedVersion,
    ModelSummary,
    VerifyReport,
    VersionInfo,
)
from resnetkit.registry.refs import PathRef, RegistryRef, parse_ref, validate_name
from resnetkit.registry.sources import VersionSource, read_source

__all__ = [
    "DEFAULT_REGISTRY_URL",
    "RegistrationOptions",
    "RegistryStore",
    "open_registry",
    "registry_url",
]

DEFAULT_REGISTRY_URL = "sqlite:///./resnetkit.db"
REGISTRY_ENV = "RESNETKIT_REGISTRY"
ARTIFACTS_ENV = "RESNETKIT_ARTIFACTS"
USER_ENV = "RESNETKIT_USER"
DEFAULT_GC_GRACE_S = 3600.0

#: Registration progress: (stage, detail). Stages: "copy" (detail "file:bytes"), "stored",
#: "recording" (inside the transaction, before commit) and "recorded".
Progress = Callable[[str, str], None]


def registry_url(url: str | None = None) -> str:
    """The registry URL to use: the argument, else ``$RESNETKIT_REGISTRY``, else the default."""
    return url or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY_URL


def current_user() -> str:
    """Who is acting, for the audit log: ``$RESNETKIT_USER``, else the login name."""
    try:
        return os.environ.get(USER_ENV) or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class RegistrationOptions:
    """Optional fields of a registration beyond what the run directory says."""

    aliases: tuple[str, ...] = ()
    reason: str = "registered"
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    created_by: str | None = None
    code_version: str | None = None
    allow_rejected: bool = False  # register an artifact that failed its own acceptance check
    # Register weights an earlier version of the model already holds. The CLI refuses them
    # unless --allow-duplicate; library callers (concurrent workers, tests) opt out.
    allow_duplicate: bool = True
    # The gate's verdict and the run's lineage, recorded in the registering transaction.
    blessing: Blessing | None = None
    # More files stored with the version (artifact name -> path): e.g. the edge models
    # exported from its weights (`registry register --artifact model.pte`).
    extra_files: Mapping[str, Path] = field(default_factory=dict)


def _artifact_root(engine: Engine, url: str, artifacts: str | os.PathLike[str] | None) -> Path:
    """Explicit root, else the one the store recorded, else ``<db file>-artifacts``."""
    explicit = artifacts or os.environ.get(ARTIFACTS_ENV)
    with read_tx(engine) as conn:
        recorded = conn.execute(
            sa.select(settings.c.value).where(settings.c.key == "artifact_root")
        ).scalar()
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if recorded is None:
            run_write(engine, lambda c: _record_root(c, root))
        return root
    if recorded is not None:
        return Path(recorded)
    db = sqlite_path(url)
    if db is None:
        raise ConfigError(
            "a PostgreSQL registry needs a shared artifact folder: pass --artifacts DIR "
            f"or set {ARTIFACTS_ENV} the first time"
        )
    return db.resolve().parent / f"{db.name}-artifacts"


def _record_root(conn: Connection, root: Path) -> None:
    exists = conn.execute(sa.select(settings.c.key).where(settings.c.key == "artifact_root"))
    if exists.first() is None:
        conn.execute(sa.insert(settings).values(key="artifact_root", value=str(root)))


def open_registry(
    url: str | None = None,
    artifacts: str | os.PathLike[str] | None = None,
    *,
    create: bool = True,
) -> RegistryStore:
    """Connect to a registry, creating or upgrading its schema as needed.

    Args:
        url: SQLAlchemy URL; None means ``$RESNETKIT_REGISTRY`` or ``sqlite:///./resnetkit.db``.
        artifacts: artifact folder; None means the recorded one or one next to the SQLite file.
        create: create a SQLite registry that does not exist yet; False for reading (a
            missing file is then an error, and nothing is created).

    Raises:
        RegistryError: when the store cannot be opened or its schema is newer than this code.
        ConfigError: for a bad URL or a missing driver.
    """
    resolved = registry_url(url)
    db = sqlite_path(resolved)
    if not create and db is not None and not db.is_file():
        raise RegistryError(
            f"no registry at {db}: register a model first (`resnetkit registry register RUN "
            f"--name NAME`), or point --registry / ${REGISTRY_ENV} at an existing one"
        )
    engine = create_registry_engine(resolved)
    try:
        migrate(engine, display_url(resolved))
        root = _artifact_root(engine, resolved, artifacts)
    except sa_exc.DBAPIError as exc:
        engine.dispose()
        raise RegistryError(
            f"cannot open the registry at {display_url(resolved)}: {exc.orig}"
        ) from exc
    except BaseException:
        engine.dispose()
        raise
    return RegistryStore(engine, resolved, ArtifactStore(root))


class RegistryStore:
    """Registered models, their immutable versions and aliases, and their artifacts."""

    def __init__(self, engine: Engine, url: str, artifacts: ArtifactStore) -> None:
        self.engine = engine
        self.url = url
        self.artifacts = artifacts

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- registration -------------------------------------------------------------------

    def register(
        self,
        source: str | os.PathLike[str],
        name: str,
        options: RegistrationOptions | None = None,
        progress: Progress | None = None,
        check: Callable[[Path], None] | None = None,
    ) -> VersionInfo:
        """Store a run directory or ``.onnx`` file as the next version of ``name``.

        The registry checks what it can without model code (``model.json``, a readable
        safetensors or ONNX file); ``check`` adds what needs it (e.g. the loader's
        ``check_loadable``: build the model and load the weights), so that a version that
        cannot be loaded never exists.

        Raises:
            RegistryError: when the source is unreadable, the same weights are already a
                version of ``name`` (unless ``allow_duplicate``), or the store refuses.
            CheckpointError: ``model.json`` or the weights are malformed.
            ConfigError: for an invalid model or alias name.
        """
        opts = options or RegistrationOptions()
        validate_name(name)
        for alias in opts.aliases:
            validate_name(alias, kind="alias")
        for key in opts.tags:
            validate_name(key, kind="tag key")
        spec = read_source(source)
        if opts.extra_files:
            clash = sorted(set(opts.extra_files) & set(spec.files))
            if clash:
                raise RegistryError(f"extra artifacts {clash} clash with the source's own files")
            spec = dataclasses.replace(spec, files={**spec.files, **opts.extra_files})
        if spec.rejected and not opts.allow_rejected:
            raise RegistryError(
                f"refusing to register {spec.path}: {spec.rejected}; requantize with another "
                "--method or more --calib images, or pass --allow-rejected to register it anyway"
            )
        if check is not None:
            check(spec.path)
        if not opts.allow_duplicate:
            self._refuse_duplicate(name, spec)
        stored = self._store_files(spec, progress)
        version_id = run_write(
            self.engine, lambda conn: self._record(conn, name, spec, stored, opts, progress)
        )
        for filename, kept in stored.items():
            if not self.artifacts.path_for(kept.digest).exists():
                # A concurrent gc took a deduplicated file between put and commit: restore it.
                self.artifacts.put(spec.files[filename])
        with read_tx(self.engine) as conn:
            info = queries.version_info(conn, version_id)
        if progress is not None:
            progress("recorded", info.ref)
        return info

    def _refuse_duplicate(self, name: str, spec: VersionSource) -> None:
        """Refuse weights that an existing version of ``name`` already holds, byte for byte."""
        filename = next(f for f in (MODEL_WEIGHTS, ONNX_FILE) if f in spec.files)
        digest = sha256_file(spec.files[filename])
        with read_tx(self.engine) as conn:
            same = queries.versions_with_artifact(conn, name, filename, digest)
        if same:
            refs = ", ".join(f"{name}:{v}" for v in same)
            raise RegistryError(
                f"{refs} already holds these exact weights ({filename} sha256 {digest[:12]}...); "
                "point an alias at it instead, or pass --allow-duplicate to register a copy"
            )

    def _store_files(self, spec: VersionSource, progress: Progress | None) -> dict[str, StoredFile]:
        stored: dict[str, StoredFile] = {}
        try:
            for filename, path in spec.files.items():
                stored[filename] = self.artifacts.put(path, _copy_reporter(progress, filename))
        except BaseException:
            # A copy failed (a full disk): no orphan files. Only the copies: a commit whose
            # acknowledgement is lost may have made a version that uses them.
            for kept in stored.values():
                self.artifacts.discard(kept)  # only files this call created
            raise
        if progress is not None:
            progress("stored", ",".join(sorted(stored)))
        return stored

    def _record(
        self,
        conn: Connection,
        name: str,
        spec: VersionSource,
        stored: dict[str, StoredFile],
        opts: RegistrationOptions,
        progress: Progress | None,
    ) -> int:
        model_id, number = _allocate_version(conn, name)
        actor = opts.created_by or current_user()
        result = conn.execute(
            sa.insert(versions).values(
                model_id=model_id,
                version=number,
                created_at=utc_now(),
                created_by=actor,
                description=opts.description,
                source_kind=spec.kind,
                source_path=str(spec.path),
                model_json=_dumps(spec.model_json),
                metrics=_dumps(spec.metrics),
                tags=_dumps(dict(opts.tags)),
                dataset_fingerprint=spec.dataset_fingerprint,
                run_id=spec.run_id,
                run_config=spec.run_config,
                code_version=opts.code_version or spec.code_version,
            )
        )
        version_id = _inserted_id(result)
        conn.execute(
            sa.insert(version_artifacts),
            [
                {
                    "version_id": version_id,
                    "filename": f,
                    "digest": s.digest,
                    "size_bytes": s.size_bytes,
                }
                for f, s in sorted(stored.items())
            ],
        )
        if opts.blessing is not None:
            blessing_ops.insert_blessing(conn, version_id, opts.blessing, actor)
        for alias in opts.aliases:
            alias_ops.move_alias(
                conn, model_id, name, alias, number, kind="set", actor=actor, reason=opts.reason
            )
        if progress is not None:
            progress("recording", f"{name}:{number}")
        return version_id

    # -- blessings ----------------------------------------------------------------------

    def record_blessing(
        self,
        ref: str,
        blessing: Blessing,
        *,
        aliases: tuple[str, ...] = (),
        reason: str = "blessed",
        actor: str | None = None,
    ) -> BlessingRecord:
        """Record the gate's verdict on an existing version, moving ``aliases`` to it in the
        same transaction (both or neither).

        Raises:
            RegistryError: the reference points at nothing, or is a path.
        """
        for alias in aliases:
            validate_name(alias, kind="alias")
        info = self.resolve(ref)
        who = actor or current_user()

        def work(conn: Connection) -> None:
            model_id = queries.require_model_id(conn, info.name, lock=True)
            version_id = alias_ops.version_id_of(conn, model_id, info.name, info.version)
            blessing_ops.insert_blessing(conn, version_id, blessing, who)
            for alias in aliases:
                alias_ops.move_alias(
                    conn, model_id, info.name, alias, info.version, kind="set", actor=who,
                    reason=reason,
                )  # fmt: skip

        run_write(self.engine, work)
        found = self.blessing_for_run(blessing.pipeline_run)
        assert found is not None  # just committed
        return found

    def blessings(self, ref: str) -> list[BlessingRecord]:
        """Every blessing record of a version, oldest first; the last is the current one."""
        parsed = parse_ref(ref)
        if isinstance(parsed, PathRef):
            raise RegistryError(f"{parsed} is a path; blessings are recorded on versions")
        with read_tx(self.engine) as conn:
            _, version_id = queries.resolve_version(conn, parsed)
            return blessing_ops.version_blessings(conn, version_id)

    def blessing_for_run(self, pipeline_run: str) -> BlessingRecord | None:
        """The record a pipeline run wrote, None if it wrote none."""
        with read_tx(self.engine) as conn:
            return blessing_ops.blessing_for_run(conn, pipeline_run)

    # -- reading ------------------------------------------------------------------------

    def resolve(self, ref: str | RegistryRef) -> VersionInfo:
        """The version a reference (``name@alias``, ``name:3``, ``name``) points at.

        Raises:
            RegistryError: when it points at nothing, or is a path (not in the registry).
        """
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        if isinstance(parsed, PathRef):
            raise RegistryError(f"{parsed} is a path, not a registry reference")
        with read_tx(self.engine) as conn:
            _, version_id = queries.resolve_version(conn, parsed)
            return queries.version_info(conn, version_id)

    def list_models(self) -> list[ModelSummary]:
        """Every registered model, by name."""
        with read_tx(self.engine) as conn:
            return queries.list_model_summaries(conn)

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a model, oldest first."""
        with read_tx(self.engine) as conn:
            return queries.list_version_infos(conn, validate_name(name))

    def history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """The alias audit log of a model (one alias, or all), oldest first."""
        with read_tx(self.engine) as conn:
            return queries.alias_history(conn, queries.require_model_id(conn, name), alias)

    def load(self, ref: str) -> LoadedVersion:
        """Every artifact of a version, each verified against its sha256 first.

        A path reference reads the run directory or ``.onnx`` file directly.

        Raises:
            IntegrityError: naming the first missing or corrupt file; nothing is returned.
        """
        parsed = parse_ref(ref)
        if isinstance(parsed, PathRef):
            spec = read_source(parsed.path)
            files = {name: path.read_bytes() for name, path in spec.files.items()}
            return LoadedVersion(None, spec.model_json, files, source=spec.path)
        info = self.resolve(parsed)
        files = {
            a.filename: self.artifacts.read_verified(a.digest, f"{info.ref}/{a.filename}")
            for a in info.artifacts
        }
        return LoadedVersion(info, info.model_json, files)

    def checkout(self, ref: str, dest: str | os.PathLike[str]) -> Path:
        """Write the verified artifacts of a version into ``dest`` as a run directory."""
        loaded = self.load(ref)
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        for filename, data in loaded.files.items():
            _write_atomic(folder / filename, data)
        return folder

    def card(self, ref: str) -> str:
        """The Markdown model card of a version."""
        info = self.resolve(ref)
        return render_card(info, self.history(info.name))

    # -- aliases ------------------------------------------------------------------------

    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str, actor: str | None = None
    ) -> AliasEvent | None:
        """Point ``name@alias`` at ``version``, logging who, when and why.

        Returns:
            The logged event, or None when the alias already pointed there (nothing logged).
        """
        validate_name(alias, kind="alias")
        who = actor or current_user()

        def work(conn: Connection) -> AliasEvent | None:
            model_id = queries.require_model_id(conn, name, lock=True)
            moved = alias_ops.move_alias(
                conn, model_id, name, alias, version, kind="set", actor=who, reason=reason
            )
            return alias_ops.last_event(conn, model_id, alias) if moved else None

        return run_write(self.engine, work)

    def rollback(
        self, name: str, alias: str, *, reason: str = "rollback", actor: str | None = None
    ) -> AliasEvent:
        """Move ``name@alias`` back to the version it held before the current one."""
        who = actor or current_user()

        def work(conn: Connection) -> AliasEvent:
            model_id = queries.require_model_id(conn, name, lock=True)
            target = alias_ops.rollback_target(conn, model_id, name, alias)
            alias_ops.move_alias(
                conn, model_id, name, alias, target, kind="rollback", actor=who, reason=reason
            )
            return alias_ops.last_event(conn, model_id, alias)

        return run_write(self.engine, work)

    def remove_alias(
        self, name: str, alias: str, *, reason: str, actor: str | None = None
    ) -> AliasEvent:
        """Delete ``name@alias``; the removal is logged like a move."""
        who = actor or current_user()

        def work(conn: Connection) -> AliasEvent:
            model_id = queries.require_model_id(conn, name, lock=True)
            alias_ops.remove_alias(conn, model_id, name, alias, actor=who, reason=reason)
            return alias_ops.last_event(conn, model_id, alias)

        return run_write(self.engine, work)

    # -- deletion and maintenance -------------------------------------------------------

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version's record; its files stay until ``gc``.

        Raises:
            RegistryError: when an alias points at the version (naming it) or it does not exist.
        """

        def work(conn: Connection) -> None:
            model_id = queries.require_model_id(conn, name, lock=True)
            version_id = alias_ops.version_id_of(conn, model_id, name, version)
            held = [a for a, v in queries.alias_map(conn, model_id).items() if v == version]
            if held:
                names = ", ".join(f"{name}@{a}" for a in held)
                raise RegistryError(
                    f"cannot delete {name}:{version}: alias {names} points at it; "
                    "move or remove the alias first"
                )
            conn.execute(sa.delete(blessings).where(blessings.c.version_id == version_id))
            conn.execute(
                sa.delete(version_artifacts).where(version_artifacts.c.version_id == version_id)
            )
            conn.execute(sa.delete(versions).where(versions.c.id == version_id))

        run_write(self.engine, work)

    def verify(self, ref: str | None = None) -> VerifyReport:
        """Hash every artifact (of one version, or of the whole store) against its record."""
        with read_tx(self.engine) as conn:
            if ref is None:
                count = conn.execute(sa.select(sa.func.count()).select_from(versions)).scalar()
                labels = referenced_files(conn)
            else:
                parsed = parse_ref(ref)
                if isinstance(parsed, PathRef):
                    raise RegistryError(f"{parsed} is a path; verify checks registered versions")
                _, version_id = queries.resolve_version(conn, parsed)
                count, labels = 1, referenced_files(conn, version_id)
        return verify_files(self.artifacts, labels, int(count or 0))

    def gc(self, *, dry_run: bool = True, grace_s: float = DEFAULT_GC_GRACE_S) -> GcReport:
        """Remove artifact files no version references (only lists them when ``dry_run``)."""
        with read_tx(self.engine) as conn:
            referenced = set(conn.execute(sa.select(version_artifacts.c.digest)).scalars())
        return collect_garbage(self.artifacts, referenced, dry_run=dry_run, grace_s=grace_s)


def _copy_reporter(progress: Progress | None, filename: str) -> Callable[[int], None] | None:
    """Turn byte counts of one file's copy into ``("copy", "file:bytes")`` progress events."""
    if progress is None:
        return None
    return lambda copied: progress("copy", f"{filename}:{copied}")


def _allocate_version(conn: Connection, name: str) -> tuple[int, int]:
    """Lock (or create) the model row and take its next version number."""
    model_id = queries.find_model_id(conn, name, lock=True)
    if model_id is None:
        result = conn.execute(
            sa.insert(registered_models).values(name=name, next_version=1, created_at=utc_now())
        )
        model_id = _inserted_id(result)
    number = conn.execute(
        sa.select(registered_models.c.next_version).where(registered_models.c.id == model_id)
    ).scalar_one()
    conn.execute(
        sa.update(registered_models)
        .where(registered_models.c.id == model_id)
        .values(next_version=number + 1)
    )
    return model_id, int(number)


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:  # pragma: no cover - every backend we support reports it
        raise RegistryError("the database did not report the id of a new row")
    return int(key[0])


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
