"""Output checks that try a write, and writes whose place cannot be made: ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write, check_output_dir, check_output_file

linux_only = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /sys and /proc")


def test_checks_accept_a_new_path_and_leave_nothing_behind(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_output_file(tmp_path / "c" / "rules.yml") == tmp_path / "c" / "rules.yml"
    assert check_output_dir(tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []  # the write probe is removed again


@linux_only
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/sys/nope", "(operation not permitted|permission denied)"),  # root | others
        ("/proc/nope/deeper", "no such file or directory"),
    ],
)
def test_an_uncreatable_output_names_the_path_and_the_reason(path: str, reason: str) -> None:
    # As root, os.access says yes to both; only a real write tells.
    for check in (check_output_dir, check_output_file):
        with pytest.raises(ConfigError, match=f"{path}.*{reason}"):
            check(path, what="--out")


def test_an_output_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "sub")


@linux_only
def test_atomic_write_where_no_folder_can_be_made_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot write /sys/nope/x\.txt: "):
        atomic_write("/sys/nope/x.txt", lambda tmp: tmp.write_text("x"))
