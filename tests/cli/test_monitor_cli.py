"""``resnetkit monitor rules|dashboards`` end to end through ``main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from resnetkit.cli.main import main
from resnetkit.monitor.slo import alert_names, generate_rules

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``resnetkit monitor ...``; returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        status = main(["monitor", *argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_rules_writes_the_rule_file_and_says_what_is_in_it(cli, tmp_path: Path) -> None:
    path = tmp_path / "prometheus" / "rules.yml"
    status, out, err = cli("rules", "-o", str(path))
    assert status == 0, err
    rules = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert rules == generate_rules()
    assert f"wrote {path}: 4 groups, 14 recording rules, 11 alerts" in out
    assert all(name in out for name in alert_names(rules))


def test_rules_follow_the_slo_file(cli, tmp_path: Path) -> None:
    slo = tmp_path / "slo.toml"
    slo.write_text("[availability]\nobjective = 0.99\n", encoding="utf-8")
    path = tmp_path / "rules.yaml"
    assert cli("rules", "-o", str(path), "--slo", str(slo))[0] == 0
    assert "(14.4 * 0.01)" in path.read_text(encoding="utf-8")
    assert (
        cli("rules", "-o", str(path), "--slo", str(ROOT / "configs" / "monitor" / "slo.toml"))[0]
        == 0
    )
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == generate_rules()


def test_dashboards_writes_one_json_file_each(cli, tmp_path: Path) -> None:
    out_dir = tmp_path / "grafana"
    status, out, err = cli("dashboards", "-o", str(out_dir))
    assert status == 0, err
    for name in ("executive", "on-call", "debug"):
        path = out_dir / f"{name}.json"
        assert f"wrote {path}" in out
        assert json.loads(path.read_text(encoding="utf-8"))["uid"] == f"resnetkit-{name}"


def test_a_bad_slo_file_is_one_line_and_exit_status_1(cli, tmp_path: Path) -> None:
    slo = tmp_path / "slo.toml"
    slo.write_text("[latency]\nthreshold_s = 0.3\n", encoding="utf-8")
    for action, output in (("rules", "rules.yml"), ("dashboards", "grafana")):
        status, out, err = cli(action, "-o", str(tmp_path / output), "--slo", str(slo))
        assert status == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert "latency.threshold_s" in err and "0.25" in err
        assert not (tmp_path / output).exists()


def test_a_missing_slo_file_is_an_error_too(cli, tmp_path: Path) -> None:
    status, _, err = cli("rules", "-o", str(tmp_path / "r.yml"), "--slo", str(tmp_path / "no"))
    assert status == 1 and "not found" in err


def test_output_paths_are_checked_before_any_work(cli, tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("", encoding="utf-8")
    # The SLO file is broken too: the output path is the error reported, so it came first.
    broken = tmp_path / "slo.toml"
    broken.write_text("window = 3\n", encoding="utf-8")
    status, _, err = cli("dashboards", "-o", str(a_file), "--slo", str(broken))
    assert status == 1 and "is a file; give a folder" in err
    status, _, err = cli("rules", "-o", str(tmp_path), "--slo", str(broken))
    assert status == 1 and "is a folder" in err
    status, _, err = cli("rules", "-o", str(tmp_path / "rules.json"))
    assert status == 1 and "should end in .yml or .yaml" in err


def test_monitor_needs_an_action(cli) -> None:
    with pytest.raises(SystemExit) as exc:
        cli()
    assert exc.value.code == 2
