"""Typed settings from TOML: round trips and clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnetkit.config import ModelConfig, from_dict, load_toml, save_toml, to_dict
from resnetkit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 0.1
    milestones: tuple[int, ...] = (10, 20)


@dataclasses.dataclass(frozen=True)
class _Outer:
    name: str = "run"
    epochs: int = 5
    seed: int | None = None
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def test_round_trip_through_toml(tmp_path: Path) -> None:
    cfg = _Outer(name='with "quotes"', epochs=3, inner=_Inner(lr=0.5, milestones=(1, 2, 3)))
    cfg = dataclasses.replace(cfg, model=ModelConfig("resnet8", {"num_classes": 4}))
    save_toml(tmp_path / "c.toml", to_dict(cfg))
    assert from_dict(_Outer, load_toml(tmp_path / "c.toml")) == cfg
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves no temp file


def test_unknown_key_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting inner\.lrate.*known settings: lr"):
        from_dict(_Outer, {"inner": {"lrate": 1}})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match="epochs: expected int"):
        from_dict(_Outer, {"epochs": "five"})
    with pytest.raises(ConfigError, match="epochs: expected int"):
        from_dict(_Outer, {"epochs": True})


def test_int_is_accepted_for_float_and_none_for_optional() -> None:
    cfg = from_dict(_Outer, {"inner": {"lr": 1}, "seed": None})
    assert cfg.inner.lr == 1.0
    assert isinstance(cfg.inner.lr, float)


def test_missing_and_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


@given(
    name=st.text(max_size=20),
    epochs=st.integers(-(2**31), 2**31),
    lr=st.floats(allow_nan=False, allow_infinity=False, width=64),
)
def test_any_string_int_and_float_survive_the_round_trip(name: str, epochs: int, lr: float) -> None:
    import tempfile

    cfg = _Outer(name=name, epochs=epochs, inner=_Inner(lr=lr))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        save_toml(path, to_dict(cfg))
        assert from_dict(_Outer, load_toml(path)) == cfg
