"""Every command that writes checks its output path first: one ``error:`` line, nothing written.

``/sys`` refuses new entries even to root (EPERM) and ``/proc`` answers ENOENT, so these are
real unwritable places whichever user runs the tests; permission bits alone would let root
through and fail later with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.cli.main import main
from tests.registry.rundirs import make_run_dir

pytestmark = pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="needs Linux's /sys and /proc"
)

NO_MODEL = "no/such/run"  # the output check must come before the model is even looked for

WRITERS = [
    ["monitor", "rules", "-o", "/sys/nope/rules.yml"],
    ["monitor", "dashboards", "-o", "/sys/nope"],
    ["monitor", "dashboards", "-o", "/proc/nope"],
    ["drift", "--model", NO_MODEL, "--data", "fashion-mnist", "--out", "/sys/nope"],
    ["drift", "--model", NO_MODEL, "--data", "fashion-mnist", "--out", "/proc/nope"],
    ["explain", "--model", NO_MODEL, "shirt.png", "-o", "/proc/nope"],
    ["explain", "--model", NO_MODEL, "shirt.png", "-o", "/sys/nope"],
    ["train", "--model", "resnet8", "--epochs", "1", "--out", "/sys/nope/run"],
    ["eval", NO_MODEL, "--out", "/proc/nope"],
    ["export", NO_MODEL, "-o", "/sys/nope/model.onnx"],
    ["quantize", NO_MODEL, "-o", "/proc/nope/model-int8.onnx"],
    ["prune", NO_MODEL, "--out", "/sys/nope"],
    ["distill", "--teacher", NO_MODEL, "--student", "resnet8", "--out", "/proc/nope"],
    ["tradeoff", NO_MODEL, "--out", "/sys/nope"],
]


@pytest.mark.parametrize("argv", WRITERS, ids=lambda argv: f"{argv[0]} {argv[-1]}")
def test_an_output_that_cannot_be_created_is_one_error_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = argv[-1]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert target in err and "Traceback" not in err
    assert not Path(target).exists()


def test_a_model_card_to_an_unwritable_place_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RESNETKIT_REGISTRY", f"sqlite:///{tmp_path / 'reg.db'}")
    run = make_run_dir(tmp_path / "run", seed=0, accuracy=0.9)
    assert main(["registry", "register", str(run), "--name", "fashion"]) == 0
    capsys.readouterr()
    for target in ("/sys/nope/card.md", "/proc/nope/card.md"):
        assert main(["registry", "card", "fashion", "-o", target]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and target in err, err
