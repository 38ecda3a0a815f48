"""Aliases, their audit log and rollback (aliases.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.errors import ConfigError, RegistryError
from resnetkit.registry import RegistrationOptions, RegistryStore


@pytest.fixture
def three_versions(store: RegistryStore, run_dir: Path) -> RegistryStore:
    for _ in range(3):
        store.register(run_dir, "fashion")
    return store


def test_every_alias_move_is_logged_with_from_to_who_when_and_why(
    three_versions: RegistryStore,
) -> None:
    store = three_versions
    store.set_alias("fashion", "production", 1, reason="first release", actor="ada")
    store.set_alias("fashion", "production", 2, reason="better accuracy", actor="grace")
    (first, second) = store.history("fashion", "production")
    assert (first.from_version, first.to_version, first.actor) == (None, 1, "ada")
    assert (second.from_version, second.to_version, second.actor) == (1, 2, "grace")
    assert second.reason == "better accuracy" and second.kind == "set"
    assert first.created_at <= second.created_at
    assert store.resolve("fashion@production").version == 2
    assert store.resolve("fashion:2").aliases == ("production",)


def test_register_with_an_alias_logs_the_move(store: RegistryStore, run_dir: Path) -> None:
    store.register(run_dir, "fashion", RegistrationOptions(aliases=("staging",), reason="ci"))
    (event,) = store.history("fashion")
    assert (event.alias, event.to_version, event.reason) == ("staging", 1, "ci")


def test_rollback_steps_back_through_the_history_and_is_logged(
    three_versions: RegistryStore,
) -> None:
    store = three_versions
    for version in (1, 2, 3):
        store.set_alias("fashion", "production", version, reason=f"v{version}")
    assert store.rollback("fashion", "production").to_version == 2
    assert store.rollback("fashion", "production").to_version == 1
    assert store.resolve("fashion@production").version == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        store.rollback("fashion", "production")
    kinds = [(e.kind, e.from_version, e.to_version) for e in store.history("fashion")]
    assert kinds[-2:] == [("rollback", 3, 2), ("rollback", 2, 1)]


def test_rollback_skips_versions_deleted_since(three_versions: RegistryStore) -> None:
    store = three_versions
    for version in (1, 2, 3):
        store.set_alias("fashion", "production", version, reason=f"v{version}")
    store.delete_version("fashion", 2)
    assert store.rollback("fashion", "production").to_version == 1


def test_aliases_are_independent(three_versions: RegistryStore) -> None:
    store = three_versions
    store.set_alias("fashion", "production", 1, reason="a")
    store.set_alias("fashion", "staging", 3, reason="b")
    store.set_alias("fashion", "production", 2, reason="c")
    assert store.rollback("fashion", "production").to_version == 1
    assert store.resolve("fashion@staging").version == 3
    assert len(store.history("fashion", "staging")) == 1


def test_removing_an_alias_is_logged_and_it_no_longer_resolves(
    three_versions: RegistryStore,
) -> None:
    store = three_versions
    store.set_alias("fashion", "canary", 3, reason="try")
    event = store.remove_alias("fashion", "canary", reason="bad latency")
    assert (event.kind, event.from_version, event.to_version) == ("remove", 3, None)
    with pytest.raises(RegistryError, match="no alias 'canary'"):
        store.resolve("fashion@canary")


def test_an_alias_cannot_point_at_a_missing_version(three_versions: RegistryStore) -> None:
    with pytest.raises(RegistryError, match="fashion has no version 9"):
        three_versions.set_alias("fashion", "production", 9, reason="typo")
    assert three_versions.history("fashion") == []


def test_alias_names_are_validated(three_versions: RegistryStore) -> None:
    with pytest.raises(ConfigError, match="invalid alias"):
        three_versions.set_alias("fashion", "prod/uction", 1, reason="x")
