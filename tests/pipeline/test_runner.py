"""The pipeline end to end on real trained models: the gate, registration, resume, bad input.

Candidates are the session's trained Fashion-MNIST runs (tests/export/rundir.py: the same
cached models the server's rollout tests use), gated with ``--candidate``; one test trains
a tiny model on base data plus a feedback export.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from resnetkit.cli.main import main
from resnetkit.data import load_dataset
from resnetkit.errors import CheckpointError, ConfigError, ResNetKitError, ServeError
from resnetkit.pipeline import PipelineConfig, load_pipeline_config, run_pipeline
from resnetkit.pipeline.runner import run_steps
from resnetkit.registry import open_registry
from tests.export.rundir import trained_run_dir

GATE = """
[data]
eval_limit = 1000
[gate]
min_accuracy = 0.6
bootstrap_samples = 500
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = str(tmp_path_factory.getbasetemp())
    return {
        "good": trained_run_dir(base),
        "shuffled": trained_run_dir(base, seed=2, shuffle_labels=True),
    }


@pytest.fixture
def config(tmp_path: Path) -> Iterator[PipelineConfig]:
    path = tmp_path / "pipeline.toml"
    path.write_text(f'registry = "sqlite:///{tmp_path / "reg.db"}"\n' + GATE)
    yield load_pipeline_config(path)


def _names(result_checks: list[dict[str, object]]) -> list[str]:
    return [str(c["name"]) for c in result_checks]


def test_a_first_candidate_is_gated_on_values_only_and_gets_the_candidate_alias(
    config: PipelineConfig, runs: dict[str, Path], tmp_path: Path
) -> None:
    result = run_pipeline(
        config, name="fashion", candidate=str(runs["good"]), out_dir=tmp_path / "p"
    )
    assert result.blessed and result.baseline is None and result.candidate == "fashion:1"
    assert _names(result.checks) == ["accuracy/test", "ece/test", "latency_p95_ms", "size_mb"]
    written = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert written["blessed"] is True and written["rollout"]["state"] == "skipped"
    assert {"name", "value", "threshold", "passed"} <= set(written["checks"][0])
    with open_registry(config.registry) as store:
        assert store.resolve("fashion@candidate").version == 1
        [record] = store.blessings("fashion:1")
    assert record.blessing.blessed and record.blessing.baseline is None
    assert set(record.blessing.lineage["data"]) == {"test"}

    again = run_pipeline(
        config, name="fashion", candidate=str(runs["good"]), out_dir=tmp_path / "p"
    )
    assert again.to_dict() == result.to_dict()
    with open_registry(config.registry) as store:
        assert len(store.list_versions("fashion")) == 1  # a finished run re-run does nothing


def test_a_shuffled_label_candidate_is_registered_not_blessed_and_moves_nothing(
    config: PipelineConfig, runs: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with open_registry(config.registry) as store:
        store.register(runs["good"], "fashion")
        store.set_alias("fashion", "production", 1, reason="test")
    (tmp_path / "p.toml").write_text(f'registry = "{config.registry}"\n' + GATE)
    argv = ["pipeline", "run", str(tmp_path / "p.toml"), "--name", "fashion", "--candidate",
            str(runs["shuffled"]), "--out", str(tmp_path / "p"), "--json"]  # fmt: skip
    assert main(argv) == 3  # not blessed
    result = json.loads(capsys.readouterr().out)
    assert not result["blessed"] and result["baseline"] == "fashion:1"
    assert result["candidate"] == "fashion:2" and result["rollout"]["state"] == "not_started"
    failed = {c["name"] for c in result["checks"] if not c["passed"]}
    assert {"accuracy/test", "accuracy_change/test", "class_change/test"} <= failed
    change = next(c for c in result["checks"] if c["name"] == "accuracy_change/test")
    assert "CI [" in change["detail"] and change["value"] < -20
    with open_registry(config.registry) as store:
        assert store.resolve("fashion@production").version == 1
        assert "candidate" not in store.resolve("fashion:2").aliases
        [record] = store.blessings("fashion:2")
    assert not record.blessing.blessed and "accuracy_change/test" in record.blessing.failed_checks
    assert main(argv[:-1]) == 3  # finished: the table again, nothing redone
    assert "FAIL" in capsys.readouterr().out


def test_the_cli_reports_bad_input_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESNETKIT_ADMIN_TOKEN", raising=False)
    (tmp_path / "p.toml").write_text("[gate]\nmin_acuracy = 1\n")
    assert (
        main(
            [
                "pipeline",
                "run",
                str(tmp_path / "p.toml"),
                "--name",
                "f",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "min_acuracy" in err and err.count("\n") == 1
    argv = [
        "pipeline",
        "run",
        "--name",
        "f",
        "--out",
        str(tmp_path / "o"),
        "--server",
        "http://127.0.0.1:9",
    ]
    assert main(argv) == 1
    assert "RESNETKIT_ADMIN_TOKEN" in capsys.readouterr().err


def test_the_same_model_against_itself_is_blessed_whatever_the_noise(
    config: PipelineConfig, runs: dict[str, Path], tmp_path: Path
) -> None:
    with open_registry(config.registry) as store:
        store.register(
            runs["good"],
            "fashion",
        )
        store.set_alias("fashion", "production", 1, reason="test")
    result = run_pipeline(config, name="fashion", candidate="fashion:1", out_dir=tmp_path / "p")
    change = next(c for c in result.checks if c["name"] == "accuracy_change/test")
    assert change["value"] == 0 and change["passed"]
    assert result.blessed and result.candidate == "fashion:1"  # gated in place, no new version
    with open_registry(config.registry) as store:
        assert [v.version for v in store.list_versions("fashion")] == [1]
        assert store.resolve("fashion@candidate").version == 1


def test_a_killed_run_resumes_in_the_step_it_was_in_even_from_a_moved_folder(
    config: PipelineConfig, runs: dict[str, Path], tmp_path: Path
) -> None:
    def die_in_the_gate(step: str, message: str) -> None:
        if (step, message) == ("gate", "started"):
            raise KeyboardInterrupt  # killed inside the gate step, evaluate recorded

    first, moved = tmp_path / "p", tmp_path / "moved"
    good = str(runs["good"])
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(
            config, name="fashion", candidate=good, out_dir=first, progress=die_in_the_gate
        )
    assert not (first / "pipeline.json").exists()
    with open_registry(config.registry) as store:
        assert store.list_models() == []
    shutil.copytree(first, moved)  # as a KFP step receives its predecessor's folder
    seen: list[tuple[str, str]] = []
    stopped = run_steps(config, name="fashion", candidate=good, out_dir=moved, until="register",
                        progress=lambda s, m: seen.append((s, m)))  # fmt: skip
    assert stopped is None and ("evaluate", "done earlier") in seen
    state = json.loads((moved / "pipeline-state.json").read_text())
    assert state["steps"]["evaluate"]["attempts"] == 1 and state["steps"]["gate"]["attempts"] == 2
    assert state["steps"]["register"]["status"] == "done" and "rollout" not in state["steps"]
    result = run_pipeline(config, name="fashion", candidate=good, out_dir=moved)
    assert result.candidate == "fashion:1" and result.blessed
    with open_registry(config.registry) as store:
        assert [v.version for v in store.list_versions("fashion")] == [1]
    with pytest.raises(ConfigError, match="other inputs"):
        run_pipeline(config, name="other", candidate=good, out_dir=moved)


def test_bad_input_is_one_clear_error_and_registers_nothing(
    config: PipelineConfig, runs: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate]\nmin_acuracy = 0.9\n")
    with pytest.raises(ConfigError, match="min_acuracy"):
        load_pipeline_config(bad)
    broken = tmp_path / "broken"
    shutil.copytree(runs["good"], broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(CheckpointError):
        run_pipeline(config, name="fashion", candidate=str(broken), out_dir=tmp_path / "p1")
    with pytest.raises(ServeError, match="cannot reach"):
        run_pipeline(config, name="fashion", candidate=str(runs["good"]), out_dir=tmp_path / "p2",
                     server="http://127.0.0.1:9", admin_token="t")  # fmt: skip
    assert not (tmp_path / "p2" / "pipeline-state.json").exists()  # a fixed call starts afresh
    missing = PipelineConfig(
        registry=config.registry, data=type(config.data)(feedback=str(tmp_path))
    )
    with pytest.raises(ConfigError, match="no export there"):
        run_pipeline(missing, name="fashion", candidate=str(runs["good"]), out_dir=tmp_path / "p3")
    with pytest.raises(ResNetKitError, match="no production version to retrain"):
        run_pipeline(config, name="fashion", out_dir=tmp_path / "p4")
    no_data = PipelineConfig(registry=config.registry, data=type(config.data)(eval="nowhere"))
    with pytest.raises(ConfigError, match="unknown dataset 'nowhere'"):
        run_pipeline(no_data, name="fashion", candidate=str(runs["good"]), out_dir=tmp_path / "p4")
    with open_registry(config.registry) as store:
        assert store.list_models() == []


def _feedback_export(root: Path) -> Path:
    """A folder as `resnetkit data export-feedback` writes it, from real test images."""
    test = load_dataset("fashion-mnist", "test", limit=200)
    folders = {name: str(i) if "/" in name else name for i, name in enumerate(test.classes)}
    for index, (image, label) in enumerate(zip(test.images, test.labels.tolist(), strict=True)):
        split = "train" if index < 120 else "holdout"
        folder = root / split / folders[test.classes[label]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{index:04d}.png")
    manifest = {"classes": {folder: i for i, folder in enumerate(folders.values())}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


RECIPE = """
epochs = 2
batch_size = 128
num_threads = 1
progress = false
[model]
arch = "resnet8"
kwargs = { width = 0.5 }
[data]
name = "fashion-mnist"
limit = 1088
val_fraction = 0.0588
"""


def test_training_on_base_plus_feedback_gates_on_the_production_holdout_too(
    tmp_path: Path,
) -> None:
    (tmp_path / "recipe.toml").write_text(RECIPE)
    _feedback_export(tmp_path / "feedback")
    path = tmp_path / "pipeline.toml"
    path.write_text(
        f'registry = "sqlite:///{tmp_path / "reg.db"}"\n[train]\nrecipe = "recipe.toml"\n'
        '[data]\nfeedback = "feedback"\nfeedback_fraction = 0.3\neval_limit = 500\n'
        "[gate]\nmin_accuracy = 0.0\nmax_ece = 1.0\nbootstrap_samples = 200\n"
    )
    result = run_pipeline(load_pipeline_config(path), name="fashion", out_dir=tmp_path / "p")
    names = _names(result.checks)
    assert "accuracy/test" in names and "accuracy/holdout" in names
    mix = result.lineage["data"]["mix"]
    assert mix["feedback"] == 120 and mix["repeats"] == 4 and mix["train"] == 1088 + 480
    assert set(result.lineage["data"]) >= {"test", "holdout", "train"}
    with open_registry(f"sqlite:///{tmp_path / 'reg.db'}") as store:
        info = store.resolve("fashion:1")
        [record] = store.blessings("fashion:1")
    assert info.run_config and record.blessing.lineage["feedback"] == str(tmp_path / "feedback")
