"""Registration, references, loading and deletion (store.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from safetensors.torch import load as load_safetensors

from resnetkit.errors import ConfigError, IntegrityError, RegistryError
from resnetkit.registry import RegistrationOptions, RegistryStore, open_registry
from tests.registry.conftest import PostgresServer
from tests.registry.rundirs import LABELS, int8_metadata, make_onnx_file, make_run_dir


def test_register_records_every_field_of_an_immutable_version(
    store: RegistryStore, run_dir: Path
) -> None:
    opts = RegistrationOptions(
        description="first try", tags={"team": "vision"}, created_by="ada", code_version="abc123"
    )
    info = store.register(run_dir, "fashion", opts)

    assert (info.name, info.version, info.ref) == ("fashion", 1, "fashion:1")
    assert info.model_json["arch"] == "resnet20"
    assert info.model_json["labels"] == LABELS
    assert info.preprocessing["size"] == [28, 28]
    assert info.metrics["test_accuracy"] == pytest.approx(0.9)
    assert info.dataset_fingerprint == "fmnist-sha256:1f2e3d"
    assert info.run_id == "run-0"
    assert info.run_config is not None and "epochs = 3" in info.run_config
    assert (info.code_version, info.created_by, info.description) == ("abc123", "ada", "first try")
    assert info.tags == {"team": "vision"}
    files = {a.filename for a in info.artifacts}
    assert files == {
        "model.safetensors",
        "model.json",
        "summary.json",
        "config.toml",
        "metrics.jsonl",
        "drift_reference.safetensors",
    }
    for artifact in info.artifacts:
        assert (
            store.artifacts.path_for(artifact.digest).read_bytes()
            == (run_dir / artifact.filename).read_bytes()
        )


def test_registering_again_makes_a_new_version_and_leaves_the_old_one_untouched(
    store: RegistryStore, run_dir: Path, tmp_path: Path
) -> None:
    first = store.register(run_dir, "fashion")
    second_run = make_run_dir(tmp_path / "run1", seed=1, accuracy=0.93)
    second = store.register(second_run, "fashion")
    assert second.version == 2
    assert store.resolve("fashion:1") == first
    assert store.resolve("fashion").version == 2
    assert second.metrics["test_accuracy"] == pytest.approx(0.93)


def test_identical_files_are_stored_once(store: RegistryStore, run_dir: Path) -> None:
    a = store.register(run_dir, "fashion")
    b = store.register(run_dir, "other")
    assert {x.digest for x in a.artifacts} == {x.digest for x in b.artifacts}
    stored = [p for p, is_temp in store.artifacts.iter_files() if not is_temp]
    assert len(stored) == len(a.artifacts)


@pytest.mark.parametrize("ref", ["fashion@production", "fashion:2", "fashion"])
def test_every_reference_form_resolves(store: RegistryStore, run_dir: Path, ref: str) -> None:
    store.register(run_dir, "fashion")
    store.register(run_dir, "fashion", RegistrationOptions(aliases=("production",)))
    assert store.resolve(ref).version == 2


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope", "no registered model named 'nope'"),
        ("fashion:7", "fashion has no version 7; its versions are 1"),
        ("fashion@staging", "fashion has no alias 'staging'"),
    ],
)
def test_unknown_references_say_what_exists(
    store: RegistryStore, run_dir: Path, ref: str, message: str
) -> None:
    store.register(run_dir, "fashion")
    with pytest.raises(RegistryError, match=message):
        store.resolve(ref)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "a..b", "x" * 200, "a b"])
def test_invalid_model_names_are_refused_before_anything_is_stored(
    store: RegistryStore, run_dir: Path, name: str
) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        store.register(run_dir, name)
    assert list(store.artifacts.iter_files()) == []


def test_load_returns_verified_bytes_that_rebuild_the_weights(
    store: RegistryStore, run_dir: Path
) -> None:
    store.register(run_dir, "fashion", RegistrationOptions(aliases=("production",)))
    loaded = store.load("fashion@production")
    assert loaded.info is not None and loaded.info.version == 1
    tensors = load_safetensors(loaded.weights)
    assert tensors["fc.weight"].shape == (len(LABELS), 64)
    assert loaded.model_json["preprocessing"]["channels"] == 1
    assert json.loads(loaded.files["model.json"]) == loaded.model_json


def test_one_flipped_byte_is_caught_on_load_naming_the_file(
    store: RegistryStore, run_dir: Path
) -> None:
    info = store.register(run_dir, "fashion")
    weights = next(a for a in info.artifacts if a.filename == "model.safetensors")
    path = store.artifacts.path_for(weights.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=r"fashion:1/model\.safetensors is corrupt"):
        store.load("fashion:1")
    report = store.verify()
    assert not report.ok
    assert len(report.problems) == 1 and "fashion:1/model.safetensors" in report.problems[0]


def test_a_missing_artifact_is_caught_on_load(store: RegistryStore, run_dir: Path) -> None:
    info = store.register(run_dir, "fashion")
    summary = next(a for a in info.artifacts if a.filename == "summary.json")
    store.artifacts.path_for(summary.digest).unlink()
    with pytest.raises(IntegrityError, match=r"fashion:1/summary\.json is missing"):
        store.load("fashion")
    assert "missing file" in store.verify("fashion:1").problems[0]


def test_checkout_writes_a_verified_run_directory(
    store: RegistryStore, run_dir: Path, tmp_path: Path
) -> None:
    store.register(run_dir, "fashion")
    out = store.checkout("fashion:1", tmp_path / "out")
    for name in ("model.safetensors", "model.json", "summary.json"):
        assert (out / name).read_bytes() == (run_dir / name).read_bytes()


def test_path_references_load_a_run_directory_directly(store: RegistryStore, run_dir: Path) -> None:
    loaded = store.load(str(run_dir))
    assert loaded.info is None
    assert loaded.weights == (run_dir / "model.safetensors").read_bytes()


def test_an_onnx_file_with_a_sidecar_registers(store: RegistryStore, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    onnx = make_onnx_file(folder / "model.onnx")
    (folder / "model.json").write_text(json.dumps({"arch": "resnet20", "labels": ["a", "b"]}))
    info = store.register(onnx, "fashion-onnx")
    assert info.source_kind == "onnx"
    assert {a.filename for a in info.artifacts} == {"model.onnx", "model.json"}
    assert store.load("fashion-onnx").weights == onnx.read_bytes()


def test_an_int8_model_over_its_accuracy_budget_is_not_registered_silently(
    store: RegistryStore, tmp_path: Path
) -> None:
    rejected = make_onnx_file(tmp_path / "bad" / "int8.onnx", int8_metadata(accepted=False))
    with pytest.raises(RegistryError, match=r"int8 accuracy check failed.*--allow-rejected"):
        store.register(rejected, "fashion-int8")
    assert store.list_models() == []
    info = store.register(rejected, "fashion-int8", RegistrationOptions(allow_rejected=True))
    assert info.metrics["quantization_drop_points"] == 7.0


def test_an_accepted_int8_model_registers_with_its_report(
    store: RegistryStore, tmp_path: Path
) -> None:
    good = make_onnx_file(tmp_path / "good" / "int8.onnx", int8_metadata(accepted=True))
    info = store.register(good, "fashion-int8")
    assert info.metrics["quantization_int8_top1"] == 0.918
    assert info.model_json["labels"] == LABELS


def test_a_directory_without_weights_is_not_a_run(store: RegistryStore, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match=r"model\.safetensors is missing"):
        store.register(tmp_path / "empty", "fashion")


def test_deleting_a_version_an_alias_points_at_is_refused_naming_the_alias(
    store: RegistryStore, run_dir: Path
) -> None:
    store.register(run_dir, "fashion", RegistrationOptions(aliases=("production",)))
    store.register(run_dir, "fashion")
    with pytest.raises(RegistryError, match="alias fashion@production points at it"):
        store.delete_version("fashion", 1)
    store.delete_version("fashion", 2)
    assert [v.version for v in store.list_versions("fashion")] == [1]
    # Numbers are never reused, so an old reference can never silently mean new weights.
    assert store.register(run_dir, "fashion").version == 3


def test_list_models_summarises_versions_and_aliases(store: RegistryStore, run_dir: Path) -> None:
    store.register(run_dir, "b-model")
    store.register(run_dir, "a-model", RegistrationOptions(aliases=("staging",)))
    store.register(run_dir, "a-model")
    summaries = store.list_models()
    assert [m.name for m in summaries] == ["a-model", "b-model"]
    assert (summaries[0].version_count, summaries[0].latest_version) == (2, 2)
    assert summaries[0].aliases == {"staging": 1}


def test_reopening_finds_the_recorded_artifact_root(
    store: RegistryStore, run_dir: Path, registry_url: str, artifact_root: Path
) -> None:
    store.register(run_dir, "fashion")
    store.close()
    with open_registry(registry_url) as reopened:
        assert reopened.artifacts.root == artifact_root.resolve()
        assert reopened.load("fashion").info is not None


def test_a_sqlite_store_keeps_artifacts_next_to_the_database(tmp_path: Path, run_dir: Path) -> None:
    with open_registry(f"sqlite:///{tmp_path / 'reg.db'}") as store:
        store.register(run_dir, "fashion")
        assert store.artifacts.root == tmp_path / "reg.db-artifacts"


def test_a_postgres_store_needs_an_artifact_folder_the_first_time(
    postgres_server: PostgresServer,
) -> None:
    with pytest.raises(ConfigError, match="--artifacts"):
        open_registry(postgres_server.create_database())


def test_an_invalid_alias_refuses_the_whole_registration(
    store: RegistryStore, run_dir: Path
) -> None:
    store.register(run_dir, "fashion")
    with pytest.raises(ConfigError):
        store.register(run_dir, "fashion", RegistrationOptions(aliases=("bad/alias",)))
    with store.engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar()
    assert count == 1
