"""resnetkit.data imports no other stage of the pipeline (only the base modules)."""

from __future__ import annotations

import ast
from pathlib import Path

import resnetkit.data
from tests.test_dependency_rules import BASE

ALLOWED = {f"resnetkit.{name}" for name in BASE}


def test_data_imports_no_other_stage() -> None:
    package = Path(resnetkit.data.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("resnetkit."):
                    assert name in ALLOWED or name.startswith("resnetkit.data"), (path, name)


def test_public_names_are_exported() -> None:
    for name in resnetkit.data.__all__:
        assert hasattr(resnetkit.data, name), name
