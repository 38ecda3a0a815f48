"""Whole-store checks and clean-up: ``verify`` and ``gc``."""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from resnetkit.registry.artifacts import ArtifactStore
from resnetkit.registry.migrations import registered_models, version_artifacts, versions
from resnetkit.registry.records import GcReport, VerifyReport

__all__ = ["collect_garbage", "referenced_files", "verify_files"]


def referenced_files(conn: Connection, version_id: int | None = None) -> dict[str, list[str]]:
    """Digest → the ``name:version/filename`` labels that reference it."""
    query = (
        sa.select(
            version_artifacts.c.digest,
            version_artifacts.c.filename,
            versions.c.version,
            registered_models.c.name,
        )
        .join(versions, versions.c.id == version_artifacts.c.version_id)
        .join(registered_models, registered_models.c.id == versions.c.model_id)
    )
    if version_id is not None:
        query = query.where(versions.c.id == version_id)
    labels: dict[str, list[str]] = defaultdict(list)
    for row in conn.execute(query):
        labels[row.digest].append(f"{row.name}:{row.version}/{row.filename}")
    return dict(labels)


def verify_files(
    store: ArtifactStore, labels: dict[str, list[str]], version_count: int
) -> VerifyReport:
    """Hash every referenced artifact and report the missing or corrupt ones."""
    report = VerifyReport(checked_versions=version_count)
    for digest in sorted(labels):
        report.checked_files += 1
        problem = store.check(digest)
        if problem is not None:
            used_by = ", ".join(sorted(labels[digest]))
            report.problems.append(f"{used_by}: {problem}")
    return report


def collect_garbage(
    store: ArtifactStore, referenced: set[str], *, dry_run: bool, grace_s: float
) -> GcReport:
    """Remove (or list) artifact files no version references and stale temp files.

    Files younger than ``grace_s`` are kept: a registration stores its files before it
    records the version, and a concurrent ``gc`` must not take them in between.
    """
    report = GcReport(dry_run=dry_run)
    for path, is_temp in store.iter_files():
        if not is_temp and path.name in referenced:
            continue
        try:
            if store.age_s(path) < grace_s:
                report.kept_recent += 1
                continue
            size = path.stat().st_size if dry_run else store.remove(path)
        except FileNotFoundError:
            continue  # removed by someone else meanwhile
        report.files.append(str(path))
        report.bytes_freed += size
    return report
