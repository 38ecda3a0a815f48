"""Parsing references and validating names (refs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.errors import ConfigError
from resnetkit.registry import PathRef, RegistryRef, parse_ref, validate_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fashion@production", RegistryRef("fashion", alias="production")),
        ("fashion:3", RegistryRef("fashion", version=3)),
        ("fashion", RegistryRef("fashion")),
        ("resnet-20_v1.2:12", RegistryRef("resnet-20_v1.2", version=12)),
        ("runs/exp1", PathRef(Path("runs/exp1"))),
        ("./run1", PathRef(Path("./run1"))),
        ("export.onnx", PathRef(Path("export.onnx"))),
        ("/abs/model.onnx", PathRef(Path("/abs/model.onnx"))),
    ],
)
def test_every_reference_form_parses(text: str, expected: RegistryRef | PathRef) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["fashion@production", "fashion:3", "fashion"])
def test_registry_references_print_as_written(text: str) -> None:
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize("text", ["", "fashion:", "fashion:0", "fashion:x", "fa shion", "a@b@c"])
def test_malformed_references_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_ref(text)


@pytest.mark.parametrize("name", ["..", "a..b", ".x", "-x", "a/b", "a\\b", "a:b", "é", "x" * 129])
def test_names_that_could_escape_or_confuse_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "resnet20", "fashion-mnist_v2.1", "_private", "x" * 128])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name
