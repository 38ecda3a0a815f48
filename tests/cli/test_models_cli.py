"""``resnetkit models list|info`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from resnetkit.cli.main import main


def test_list_prints_a_table_with_params_and_macs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "resnet1*"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "11.69M" in out and "1.814G" in out
    assert "resnet101" in out and "resnet110" in out


def test_list_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50"]["params"] == 25_557_032
    assert 4.08e9 < by_name["resnet50"]["macs"] < 4.11e9
    assert by_name["resnet20"]["input_size"] == [3, 32, 32]


def test_info_shows_feature_shapes_per_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "info", "resnet50", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stage_shapes"] == [[256, 56, 56], [512, 28, 28], [1024, 14, 14], [2048, 7, 7]]
    assert info["layers"] == {"conv": 53, "linear": 1}
    assert main(["models", "info", "resnet_hybrid"]) == 0
    assert "feature shapes per stage" in capsys.readouterr().out


def test_unknown_model_is_one_line_and_exit_status_1() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "resnetkit.cli.main", "models", "info", "resnet05"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: unknown model 'resnet05'; did you mean")
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
