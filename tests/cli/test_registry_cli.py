"""``resnetkit registry ...`` end to end through ``main`` on a SQLite registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetkit.cli.main import main
from tests.registry.rundirs import int8_metadata, make_onnx_file, make_run_dir


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run the CLI against a fresh registry; returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("RESNETKIT_REGISTRY", f"sqlite:///{tmp_path / 'reg.db'}")
    monkeypatch.setenv("RESNETKIT_USER", "ci-bot")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps long cells at the terminal width
    monkeypatch.delenv("RESNETKIT_ARTIFACTS", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        status = main(["registry", *argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [make_run_dir(tmp_path / f"run{i}", seed=i, accuracy=0.9 + i / 100) for i in range(2)]


def _json(run, *argv: str):
    status, out, err = run(*argv, "--json")
    assert status == 0, err
    return json.loads(out)


def test_register_list_show_with_json_for_scripts(cli, runs: list[Path]) -> None:
    info = _json(cli, "register", str(runs[0]), "--name", "fashion", "--alias", "production")
    assert (info["name"], info["version"], info["aliases"]) == ("fashion", 1, ["production"])
    _json(cli, "register", str(runs[1]), "--name", "fashion", "--tag", "team=vision")
    (model,) = _json(cli, "list")
    assert (model["name"], model["latest_version"], model["aliases"]) == (
        "fashion",
        2,
        {"production": 1},
    )
    shown = _json(cli, "show", "fashion:2")
    assert shown["tags"] == {"team": "vision"} and shown["created_by"] == "ci-bot"
    assert [v["version"] for v in _json(cli, "list", "fashion")] == [1, 2]


def test_tables_for_people(cli, runs: list[Path]) -> None:
    cli("register", str(runs[0]), "--name", "fashion")
    status, out, _ = cli("list")
    assert status == 0 and "fashion" in out and "versions" in out
    status, out, _ = cli("show", "fashion")
    assert status == 0 and "model.safetensors" in out and "resnet20" in out


def test_alias_rollback_and_history(cli, runs: list[Path]) -> None:
    for run in runs:
        cli("register", str(run), "--name", "fashion")
    assert cli("alias", "fashion", "production", "1", "--reason", "first")[0] == 0
    assert cli("alias", "fashion", "production", "2", "--reason", "better")[0] == 0
    event = _json(cli, "rollback", "fashion@production", "--reason", "latency regression")
    assert (event["from_version"], event["to_version"], event["kind"]) == (2, 1, "rollback")
    history = _json(cli, "history", "fashion")
    assert [(e["from_version"], e["to_version"]) for e in history] == [(None, 1), (1, 2), (2, 1)]
    assert {e["actor"] for e in history} == {"ci-bot"}
    status, out, _ = cli("history", "fashion")
    assert status == 0 and "latency regression" in out


def test_alias_requires_a_reason(cli, runs: list[Path]) -> None:
    cli("register", str(runs[0]), "--name", "fashion")
    with pytest.raises(SystemExit):
        cli("alias", "fashion", "production", "1")


def test_errors_are_one_line_and_exit_1(cli, runs: list[Path]) -> None:
    cli("register", str(runs[0]), "--name", "fashion", "--alias", "production")
    status, _, err = cli("show", "fashion:9")
    assert status == 1 and err.startswith("error: fashion has no version 9")
    status, _, err = cli("delete", "fashion:1")
    assert status == 1 and "alias fashion@production points at it" in err
    status, _, err = cli("register", str(runs[0]), "--name", "../x")
    assert status == 1 and "invalid model name" in err


def test_verify_exits_1_on_a_tampered_artifact(cli, runs: list[Path], tmp_path: Path) -> None:
    info = _json(cli, "register", str(runs[0]), "--name", "fashion")
    assert _json(cli, "verify")["ok"] is True
    digest = next(a["digest"] for a in info["artifacts"] if a["filename"] == "model.json")
    path = tmp_path / "reg.db-artifacts" / "sha256" / digest
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b" ")
    status, out, _ = cli("verify", "--json")
    report = json.loads(out)
    assert status == 1 and not report["ok"] and "fashion:1/model.json" in report["problems"][0]


def test_delete_then_gc_dry_run_then_apply(cli, runs: list[Path]) -> None:
    cli("register", str(runs[0]), "--name", "fashion")
    cli("register", str(runs[1]), "--name", "fashion")
    assert cli("delete", "fashion:2")[0] == 0
    dry = _json(cli, "gc", "--grace-s", "0")
    assert dry["dry_run"] and dry["files"]
    assert all(Path(f).exists() for f in dry["files"])
    done = _json(cli, "gc", "--grace-s", "0", "--apply")
    assert sorted(done["files"]) == sorted(dry["files"])
    assert _json(cli, "verify")["ok"] is True


def test_card_writes_markdown(cli, runs: list[Path], tmp_path: Path) -> None:
    cli("register", str(runs[0]), "--name", "fashion", "--alias", "production")
    target = tmp_path / "cards" / "fashion.md"
    assert cli("card", "fashion@production", "-o", str(target))[0] == 0
    text = target.read_text()
    assert text.startswith("# fashion — version 1") and "## Alias history" in text
    status, out, _ = cli("card", "fashion")
    assert status == 0 and out == text


def test_registry_url_flag_overrides_the_environment(cli, runs: list[Path], tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    _json(cli, "register", str(runs[0]), "--name", "fashion", "--registry", other)
    status, _, err = cli("list")  # the environment's registry was never created
    assert status == 1 and "no registry at" in err
    assert len(_json(cli, "list", "--registry", other)) == 1


@pytest.mark.parametrize("command", [["list"], ["show", "x:1"], ["verify"], ["history", "x"]])
def test_reading_a_registry_that_does_not_exist_creates_nothing(
    cli, tmp_path: Path, command: list[str]
) -> None:
    status, _, err = cli(*command)
    assert status == 1 and err.startswith("error: no registry at")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda run: (run / "model.safetensors").write_bytes(b"\x00" * 64), "safetensors"),
        (lambda run: (run / "model.safetensors").write_bytes(b""), "empty"),
        (
            lambda run: (run / "model.json").write_text(
                (run / "model.json").read_text().replace("resnet20", "resnet56")
            ),
            "do not fit the model card",
        ),
        (
            lambda run: (run / "model.json").write_text(
                (run / "model.json").read_text().replace('"Coat"', '"Coat", "Hat"')
            ),
            "6 labels but the head has num_classes=5",
        ),
    ],
    ids=["random-bytes", "empty-weights", "wrong-arch", "labels-disagree"],
)
def test_a_version_that_cannot_be_loaded_is_never_registered(
    cli, runs: list[Path], break_it, message: str
) -> None:
    break_it(runs[0])
    status, _, err = cli("register", str(runs[0]), "--name", "fashion")
    assert status == 1 and message in err and "Traceback" not in err
    assert "\n" not in err.strip()  # one line
    assert cli("list", "--json")[1].strip() in ("[]", "")


def test_an_empty_onnx_file_is_refused(cli, tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")
    status, _, err = cli("register", str(tmp_path / "m.onnx"), "--name", "x")
    assert status == 1 and "empty" in err


def test_registering_the_same_weights_twice_needs_allow_duplicate(cli, runs: list[Path]) -> None:
    _json(cli, "register", str(runs[0]), "--name", "fashion")
    status, _, err = cli("register", str(runs[0]), "--name", "fashion")
    assert status == 1 and "fashion:1 already holds these exact weights" in err
    info = _json(cli, "register", str(runs[0]), "--name", "fashion", "--allow-duplicate")
    assert info["version"] == 2


def test_alias_moves_need_a_reason_and_a_move_to_the_same_version_is_not_logged(
    cli, runs: list[Path]
) -> None:
    _json(cli, "register", str(runs[0]), "--name", "fashion")
    status, _, err = cli("alias", "fashion", "production", "1", "--reason", "  ")
    assert status == 1 and "--reason" in err
    status, _, err = cli("register", str(runs[1]), "--name", "fashion", "--reason", "why")
    assert status == 1 and "--alias" in err
    _json(cli, "alias", "fashion", "production", "1", "--reason", "first")
    again = _json(cli, "alias", "fashion", "production", "1", "--reason", "again")
    assert again["moved"] is False
    assert len(_json(cli, "history", "fashion")) == 1


def test_a_rejected_int8_model_needs_allow_rejected(cli, tmp_path: Path) -> None:
    int8 = make_onnx_file(tmp_path / "int8.onnx", int8_metadata(accepted=False))
    status, _, err = cli("register", str(int8), "--name", "fashion-int8")
    assert status == 1 and "int8 accuracy check failed" in err and "Traceback" not in err
    info = _json(cli, "register", str(int8), "--name", "fashion-int8", "--allow-rejected")
    assert info["metrics"]["quantization_drop_points"] == 7.0
