"""verify and gc over the whole store (maintenance.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from resnetkit.registry import RegistrationOptions, RegistryStore
from tests.registry.rundirs import make_run_dir


def test_verify_passes_on_an_intact_store(store: RegistryStore, run_dir: Path) -> None:
    store.register(run_dir, "fashion")
    store.register(run_dir, "fashion")
    report = store.verify()
    assert report.ok and report.checked_versions == 2 and report.checked_files == 6


def test_gc_is_a_dry_run_by_default_and_keeps_referenced_files(
    store: RegistryStore, run_dir: Path, tmp_path: Path
) -> None:
    keep = store.register(run_dir, "fashion", RegistrationOptions(aliases=("production",)))
    drop = store.register(make_run_dir(tmp_path / "run1", seed=1), "fashion")
    store.delete_version("fashion", drop.version)
    only_dropped = {a.digest for a in drop.artifacts} - {a.digest for a in keep.artifacts}
    assert only_dropped

    dry = store.gc(grace_s=0)
    assert dry.dry_run and {Path(f).name for f in dry.files} == only_dropped
    assert all(Path(f).exists() for f in dry.files)

    done = store.gc(dry_run=False, grace_s=0)
    assert {Path(f).name for f in done.files} == only_dropped
    assert not any(Path(f).exists() for f in done.files)
    assert done.bytes_freed > 0
    assert store.verify().ok
    assert store.load("fashion@production").info is not None


def test_gc_keeps_recent_unreferenced_files_for_registrations_in_flight(
    store: RegistryStore, run_dir: Path, tmp_path: Path
) -> None:
    orphan = tmp_path / "orphan.bin"
    orphan.write_bytes(b"stored but not yet recorded")
    store.artifacts.put(orphan)
    report = store.gc(dry_run=False)
    assert report.files == [] and report.kept_recent == 1
