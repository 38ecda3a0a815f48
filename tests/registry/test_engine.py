"""Registry URLs and connections (engine.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.errors import ConfigError
from resnetkit.registry import open_registry, registry_url
from resnetkit.registry.engine import create_registry_engine


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "invalid registry URL"),
        ("mysql://u@h/db", "unsupported registry backend 'mysql'"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
    ],
)
def test_unusable_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_registry_engine(url)


def test_the_url_comes_from_the_argument_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RESNETKIT_REGISTRY", raising=False)
    assert registry_url() == "sqlite:///./resnetkit.db"
    monkeypatch.setenv("RESNETKIT_REGISTRY", "sqlite:///env.db")
    assert registry_url() == "sqlite:///env.db"
    assert registry_url("sqlite:///arg.db") == "sqlite:///arg.db"


def test_sqlite_stores_use_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    with open_registry(f"sqlite:///{tmp_path / 'r.db'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5_000  # the default
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_the_registry_timeout_comes_from_the_environment_and_must_be_positive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESNETKIT_REGISTRY_TIMEOUT_S", "0.25")
    engine = create_registry_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 250
    engine.dispose()
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("RESNETKIT_REGISTRY_TIMEOUT_S", bad)
        with pytest.raises(ConfigError, match="RESNETKIT_REGISTRY_TIMEOUT_S"):
            create_registry_engine(f"sqlite:///{tmp_path / 'r.db'}")
