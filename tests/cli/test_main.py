"""The ``resnetkit`` entry point: dispatch, help, and what a command imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resnetkit.cli.main import COMMAND_GROUPS, build_parser, main


def _commands(parser: object) -> set[str]:
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]  # type: ignore[attr-defined]
    return set(actions[0].choices)


def test_every_command_is_registered_by_the_module_named_for_it() -> None:
    assert _commands(build_parser()) == set(COMMAND_GROUPS)
    for command, module in COMMAND_GROUPS.items():
        owned = {c for c, m in COMMAND_GROUPS.items() if m == module}
        assert _commands(build_parser(command)) == owned


def test_a_training_run_does_not_import_onnx_runtime_or_sqlalchemy() -> None:
    code = (
        "import sys\n"
        "from resnetkit.cli.main import main\n"
        "try:\n"
        "    main(['train', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('onnx', 'onnxruntime', 'sqlalchemy')\n"
        "print('LOADED', sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "--epochs" in proc.stdout
    assert "LOADED []" in proc.stdout


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--debug", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMAND_GROUPS)


def test_unknown_command_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'trian'" in err and "tradeoff" in err


def test_no_command_prints_help_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_debug_works_after_the_command_too(capsys: pytest.CaptureFixture[str]) -> None:
    from resnetkit.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):  # --debug shows the traceback: the error escapes
        main(["models", "info", "resnet05", "--debug"])


def test_help_loads_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from resnetkit.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "TORCH False" in proc.stdout and "serve" in proc.stdout


def test_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.run(
        f"{sys.executable} -m resnetkit.cli.main models list --json | head -c 10",
        shell=True, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
