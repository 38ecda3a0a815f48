"""The dependency rules of docs/architecture.md, checked by reading every import in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnetkit"
# The base of the package: contracts every stage shares, importing no stage.
BASE = {"errors", "fileio", "config", "contract", "onnxio", "telemetry", "cost", "lazy"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "fileio": {"errors"},
    "config": {"errors", "fileio"},
    "contract": {"errors", "fileio"},
    "onnxio": {"errors", "contract"},
    "telemetry": {"errors"},
    "cost": {"errors"},
    "lazy": set(),
    "models": BASE,
    "data": BASE,
    "evaluate": BASE | {"models", "data"},
    "train": BASE | {"models", "data", "evaluate"},
    "compress": BASE | {"models", "data", "train", "evaluate"},
    # export holds the loader: it resolves registry references and builds folded and int8
    # backends, so it may import compress and registry; neither imports export.
    "export": BASE | {"models", "data", "train", "evaluate", "compress", "registry"},
    "registry": BASE,
    "serve": BASE | {"models", "data", "export", "registry", "monitor"},
    "monitor": BASE | {"models"},
    # The closed loop drives every stage; nothing imports it (the server least of all).
    "pipeline": BASE
    | {"models", "data", "train", "evaluate", "compress", "export", "registry", "monitor"},
}


def _stage(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_stages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    own = path.relative_to(PACKAGE).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(own[: len(own) - node.level])
                module = ".".join(["resnetkit", *base, *(node.module or "").split(".")])
                names = [module.rstrip(".")]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "resnetkit" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_what_its_stage_may(path: Path) -> None:
    stage = _stage(path)
    imported = _imported_stages(path) - {stage}
    if stage in ("cli", "__main__"):  # python -m resnetkit: the command itself
        return
    assert "cli" not in imported, f"{path.name} imports the CLI; nothing may"
    if stage == "__init__":
        return
    assert stage in ALLOWED, f"{stage} is not a stage of docs/architecture.md; add it to the rules"
    forbidden = imported - ALLOWED[stage]
    assert not forbidden, f"{stage}/{path.name} imports {sorted(forbidden)}"


def test_the_rule_checker_sees_imports() -> None:
    imported = _imported_stages(PACKAGE / "models" / "zoo.py")
    assert "errors" in imported
