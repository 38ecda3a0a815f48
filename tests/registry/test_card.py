"""Markdown model cards (card.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from resnetkit.registry import RegistrationOptions, RegistryStore
from tests.registry.rundirs import make_run_dir


def test_card_has_every_section_with_the_recorded_values(
    store: RegistryStore, run_dir: Path
) -> None:
    store.register(
        run_dir, "fashion", RegistrationOptions(aliases=("production",), description="Baseline.")
    )
    card = store.card("fashion@production")
    assert card.startswith("# fashion — version 1\n")
    for heading in ("Architecture", "Data", "Metrics", "Preprocessing", "Lineage", "Alias history"):
        assert f"\n## {heading}\n" in card
    assert "`resnet20`" in card
    assert "- **parameters**: 272.47K" in card and "- **MACs**: 40.81M" in card
    assert "| test_accuracy | 0.9000 |" in card
    assert "fmnist-sha256:1f2e3d" in card and "run-0" in card
    assert "| size | [28, 28] |" in card
    assert "Aliases: `fashion@production`" in card
    assert "| production | set | - | 1 |" in card


def test_card_omits_params_and_macs_without_a_profile(store: RegistryStore, tmp_path: Path) -> None:
    store.register(make_run_dir(tmp_path / "r", profile=False), "fashion")
    card = store.card("fashion")
    assert "parameters" not in card and "MACs" not in card
    assert "No alias has been set." in card
