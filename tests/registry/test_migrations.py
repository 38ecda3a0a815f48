"""Schema creation, upgrades and refusal of newer schemas (migrations.py), on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from resnetkit.errors import RegistryError
from resnetkit.registry import LATEST_SCHEMA_VERSION, RegistrationOptions, open_registry
from resnetkit.registry.engine import create_registry_engine
from resnetkit.registry.migrations import migrate, schema_version


def test_a_new_store_is_created_at_the_latest_schema(
    registry_url: str, artifact_root: Path
) -> None:
    with open_registry(registry_url, artifact_root) as store, store.engine.connect() as conn:
        assert schema_version(conn) == LATEST_SCHEMA_VERSION


def test_an_older_store_is_upgraded_in_place(
    registry_url: str, artifact_root: Path, run_dir: Path
) -> None:
    engine = create_registry_engine(registry_url)
    migrate(engine, registry_url, target=1)
    with engine.connect() as conn:
        assert schema_version(conn) == 1
        assert not sa.inspect(conn).has_table("alias_events")
    engine.dispose()

    with open_registry(registry_url, artifact_root) as store:
        store.register(run_dir, "fashion", RegistrationOptions(aliases=("production",)))
        assert len(store.history("fashion")) == 1
        with store.engine.connect() as conn:
            assert schema_version(conn) == LATEST_SCHEMA_VERSION


def test_a_store_with_a_newer_schema_is_refused_clearly(
    registry_url: str, artifact_root: Path
) -> None:
    open_registry(registry_url, artifact_root).close()
    engine = create_registry_engine(registry_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO resnetkit_schema (version, applied_at) VALUES (99, 'future')")
        )
    engine.dispose()
    with pytest.raises(RegistryError, match=r"schema version 99, newer than .* upgrade resnetkit"):
        open_registry(registry_url, artifact_root)
