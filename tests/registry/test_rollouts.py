"""Rollout rows in the registry (registry/rollouts.py): what cannot start is refused by kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.errors import RegistryError
from resnetkit.registry import RegistryStore
from resnetkit.registry import rollouts as db
from tests.registry.rundirs import make_run_dir


def _two_versions(store: RegistryStore, tmp_path: Path) -> None:
    store.register(make_run_dir(tmp_path / "a", seed=0), "fm")
    store.register(make_run_dir(tmp_path / "b", seed=1), "fm")


def _start(store: RegistryStore, stable: int, canary: int) -> db.RolloutRecord:
    return db.start_rollout(store, "fm", stable_version=stable, canary_version=canary,
                            config={}, first_weight=5.0, actor="test")  # fmt: skip


def test_a_canary_equal_to_stable_and_a_second_rollout_are_refused_as_conflicts(
    store: RegistryStore, tmp_path: Path
) -> None:
    _two_versions(store, tmp_path)
    with pytest.raises(db.RolloutRefused, match="already the stable version"):
        _start(store, 1, 1)
    first = _start(store, 1, 2)
    busy = r"already has a rollout in progress \(fm:1 -> fm:2\)"
    with pytest.raises(db.RolloutRefused, match=busy):
        _start(store, 2, 1)
    assert db.active_rollout(store, "fm") == first


def test_a_missing_version_is_not_a_conflict(store: RegistryStore, tmp_path: Path) -> None:
    _two_versions(store, tmp_path)
    with pytest.raises(RegistryError) as raised:
        _start(store, 1, 9)
    assert not isinstance(raised.value, db.RolloutRefused)
