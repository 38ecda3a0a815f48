"""Blessing records (the gate's verdict and lineage) on versions, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.errors import RegistryError
from resnetkit.registry import RegistrationOptions, RegistryStore
from resnetkit.registry.records import Blessing

CHECKS = (
    {"name": "accuracy/test", "value": 0.91, "threshold": 0.8, "passed": True},
    {"name": "accuracy_change/test", "value": -2.5, "threshold": -1.0, "passed": False},
)


def _blessing(run: str, *, blessed: bool, baseline: str | None = "fashion:1") -> Blessing:
    lineage = {"data": {"test": "sha256:abc"}, "baseline": baseline, "config": {"gate": {}}}
    return Blessing(run, blessed, baseline, CHECKS if not blessed else CHECKS[:1], lineage)


def test_a_version_registers_with_its_blessing_and_alias_in_one_step(
    store: RegistryStore, run_dir: Path
) -> None:
    blessing = _blessing("run-a", blessed=True, baseline=None)
    options = RegistrationOptions(aliases=("candidate",), blessing=blessing)
    info = store.register(run_dir, "fashion", options)
    [record] = store.blessings(info.ref)
    assert record.blessing == blessing and record.ref == "fashion:1"
    assert record.blessing.lineage["data"] == {"test": "sha256:abc"}
    assert store.resolve("fashion@candidate").version == 1
    assert store.blessing_for_run("run-a") == record
    assert store.blessing_for_run("run-other") is None


def test_a_registration_killed_before_commit_leaves_no_version_blessing_or_alias(
    store: RegistryStore, run_dir: Path
) -> None:
    def crash(stage: str, detail: str) -> None:
        if stage == "recording":
            raise KeyboardInterrupt  # killed inside the transaction, after every insert

    options = RegistrationOptions(aliases=("candidate",), blessing=_blessing("r", blessed=True))
    with pytest.raises(KeyboardInterrupt):
        store.register(run_dir, "fashion", options, progress=crash)
    assert store.blessing_for_run("r") is None
    assert not store.list_models() or not store.list_versions("fashion")


def test_a_not_blessed_version_keeps_its_failed_checks_and_moves_no_alias(
    store: RegistryStore, run_dir: Path
) -> None:
    store.register(run_dir, "fashion", RegistrationOptions(aliases=("candidate",)))
    info = store.register(
        run_dir, "fashion", RegistrationOptions(blessing=_blessing("b", blessed=False))
    )
    [record] = store.blessings(info.ref)
    assert not record.blessing.blessed
    assert record.blessing.failed_checks == ["accuracy_change/test"]
    assert store.resolve("fashion@candidate").version == 1


def test_a_version_gated_again_gets_a_second_record_and_the_alias_with_it(
    store: RegistryStore, run_dir: Path
) -> None:
    info = store.register(
        run_dir, "fashion", RegistrationOptions(blessing=_blessing("1", blessed=False))
    )
    store.record_blessing(info.ref, _blessing("2", blessed=True), aliases=("candidate",))
    records = store.blessings(info.ref)
    assert [r.blessing.pipeline_run for r in records] == ["1", "2"]
    assert records[-1].blessing.blessed
    assert store.resolve("fashion@candidate").version == info.version
    with pytest.raises(RegistryError, match="no version 9"):
        store.record_blessing("fashion:9", _blessing("3", blessed=True))


def test_deleting_a_version_removes_its_blessings(store: RegistryStore, run_dir: Path) -> None:
    info = store.register(
        run_dir, "fashion", RegistrationOptions(blessing=_blessing("d", blessed=True))
    )
    store.delete_version("fashion", info.version)
    assert store.blessing_for_run("d") is None
