"""``pipeline compile --target kfp``: compiled offline by the real KFP v2 compiler."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest
import yaml

from resnetkit.cli.main import main
from resnetkit.errors import MissingDependency
from resnetkit.pipeline import STEPS
from resnetkit.pipeline.kfp import compile_kfp

try:
    import kfp  # noqa: F401
except ImportError:  # the [kfp] extra: skipped without it, except under CI
    if os.environ.get("CI"):
        raise
    pytest.skip("the [kfp] extra is not installed", allow_module_level=True)


def test_the_compiled_spec_chains_the_five_steps_by_their_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    assert (
        main(["pipeline", "compile", "--target", "kfp", "-o", str(out), "--image", "me/rk:1"]) == 0
    )
    spec = yaml.safe_load(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(f"resnetkit-{s}" for s in STEPS)
    for before, after in itertools.pairwise(STEPS):
        task = tasks[f"resnetkit-{after}"]
        assert task["dependentTasks"] == [f"resnetkit-{before}"]
        previous = task["inputs"]["artifacts"]["previous"]["taskOutputArtifact"]
        assert previous == {"outputArtifactKey": "run", "producerTask": f"resnetkit-{before}"}
    assert "dependentTasks" not in tasks["resnetkit-train"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"name", "image", "pipeline_toml", "candidate", "server", "registry"}
    assert params["image"]["defaultValue"] == "me/rk:1" and "defaultValue" not in params["name"]
    for step in STEPS:
        container = spec["deploymentSpec"]["executors"][f"exec-resnetkit-{step}"]["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}"
        assert (
            "resnetkit pipeline" in container["command"][-1]
            and "--until" in container["command"][-1]
        )
        assert container["args"][2] == step


def test_without_kfp_compile_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kfp", None)  # import kfp now raises ImportError
    with pytest.raises(MissingDependency, match=r"resnetkit\[kfp\]"):
        compile_kfp(tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


def test_the_committed_spec_is_what_the_compiler_writes(tmp_path: Path) -> None:
    committed = Path(__file__).resolve().parents[2] / "deploy" / "pipelines" / "promotion.yaml"
    fresh = compile_kfp(tmp_path / "p.yaml")

    def spec(path: Path) -> dict[str, object]:
        loaded = dict(yaml.safe_load(path.read_text()))
        loaded.pop("sdkVersion")  # the kfp release that compiled it
        return loaded

    assert spec(committed) == spec(fresh), "recompile: resnetkit pipeline compile -o " + str(
        committed
    )
