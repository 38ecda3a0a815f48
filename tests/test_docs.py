"""The repository describes itself, and its docs say what the code does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.test_dependency_rules import ALLOWED, BASE

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    paths = [ROOT / name for name in names]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:4096]]


def test_nothing_points_outside_the_repository() -> None:
    outside = "../" + "shared"  # split, so this file does not match itself
    pointing = [str(p.relative_to(ROOT)) for p in _tracked_text_files() if outside in p.read_text()]
    assert pointing == []


def test_the_readme_layout_points_to_the_architecture_page() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1]
    assert "docs/architecture.md" in layout and ARCHITECTURE.is_file()


def _documented_rules() -> dict[str, set[str]]:
    section = ARCHITECTURE.read_text().split("## Dependency rules", 1)[1].split("\n## ", 1)[0]
    rules: dict[str, set[str]] = {}
    for package, allowed in re.findall(r"^\| `(\w+)` \| ([^|]+) \|$", section, re.MULTILINE):
        names = set(re.findall(r"`(\w+)`", allowed))
        rules[package] = names | (BASE if allowed.startswith("base") else set())
    return rules


def test_the_architecture_page_states_the_enforced_dependency_rules() -> None:
    documented = _documented_rules()
    assert documented.pop("cli") == set()  # "anything": the rules test skips the CLI
    assert documented == ALLOWED


def test_the_slo_file_names_itself_in_its_examples() -> None:
    slo = ROOT / "configs" / "monitor" / "slo.toml"
    named = re.findall(r"--slo (\S+)", slo.read_text())
    assert named and all((ROOT / path).resolve() == slo for path in named)


def test_the_readme_names_what_the_dashboard_polls() -> None:
    app_js = (ROOT / "src" / "resnetkit" / "serve" / "static" / "app.js").read_text()
    polled = set(re.findall(r'api\("(v1/stats|metrics)"\)', app_js))
    readme = (ROOT / "README.md").read_text()
    dashboard = readme.split("### Dashboard", 1)[1].split("\n#", 1)[0]
    sentence = re.search(r"polled from[^;]*", dashboard)
    assert polled == {"v1/stats"} and sentence is not None
    assert "`/v1/stats`" in sentence.group() and "/metrics" not in sentence.group()
