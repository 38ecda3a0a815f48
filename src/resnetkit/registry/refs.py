"""Names and references: ``name@alias``, ``name:3``, ``name`` (latest), or a path.

A reference that contains a path separator, starts with ``.`` or ``~``, or ends with
``.onnx`` is a path to a run directory or an ONNX file; anything else names a registered
model. A run directory in the current folder is therefore written ``./run1``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from resnetkit.errors import ConfigError

__all__ = ["PathRef", "RegistryRef", "parse_ref", "validate_name"]

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def validate_name(name: str, *, kind: str = "model name") -> str:
    """Check a model or alias name: letters, digits, ``-``, ``_``, ``.``; no ``..``.

    Returns:
        The name, unchanged.

    Raises:
        ConfigError: naming what is wrong with it.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid {kind} {name!r}: use 1-128 letters, digits, '-', '_' or '.', "
            "starting with a letter, digit or '_', without '..' or path separators"
        )
    return name


@dataclass(frozen=True)
class RegistryRef:
    """A reference into the registry: exactly one of ``version`` and ``alias`` or neither."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return self.name


@dataclass(frozen=True)
class PathRef:
    """A reference to a run directory or an ``.onnx`` file outside the registry."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


def _looks_like_path(text: str) -> bool:
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return (
        any(sep in text for sep in seps)
        or text.startswith((".", "~"))
        or text.lower().endswith(".onnx")
    )


def parse_ref(text: str) -> RegistryRef | PathRef:
    """Parse a reference string.

    Raises:
        ConfigError: when the text is neither a valid path nor a valid registry reference.
    """
    if not text:
        raise ConfigError("empty model reference; use NAME, NAME:VERSION, NAME@ALIAS or a path")
    if _looks_like_path(text):
        return PathRef(Path(text).expanduser())
    if "@" in text:
        name, _, alias = text.partition("@")
        return RegistryRef(validate_name(name), alias=validate_name(alias, kind="alias"))
    if ":" in text:
        name, _, version = text.partition(":")
        if not version.isdigit() or int(version) < 1:
            raise ConfigError(f"invalid version in {text!r}: expected NAME:N with N >= 1")
        return RegistryRef(validate_name(name), version=int(version))
    return RegistryRef(validate_name(text))
