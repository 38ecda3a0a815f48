"""Attributes of a package imported from their submodules on first use (PEP 562).

A package lists ``name -> submodule`` and sets ``__getattr__ = lazy_attributes(__name__, table)``
(with the real imports under ``TYPE_CHECKING`` for type checkers), so ``from resnetkit.data
import PreprocessingSpec`` loads one light module, not the package's torch-heavy siblings: the
serving runtime stays torch-free. This is a base module: it imports nothing of resnetkit.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``table[name]`` when ``name`` is
    first asked for, and keeps the value in the package so later lookups are plain."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
