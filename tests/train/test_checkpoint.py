"""Checkpoint files: a round trip, clear errors for bad files, and RNG states that replay."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from resnetkit.errors import CheckpointError
from resnetkit.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint


def _state() -> dict[str, object]:
    return {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "position": [1, 2, 3], "cfg": "x"}


def test_round_trip_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "latest.pt"
    save_checkpoint(path, _state())
    state = load_checkpoint(path)
    torch.testing.assert_close(state["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert state["position"] == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran",))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, "no checkpoint at"),
        (lambda p: p.write_bytes(b"\x80\x02not a checkpoint"), "cannot read checkpoint"),
        (lambda p: torch.save({"weights": torch.ones(1)}, p), "not a resnetkit training"),
        (
            lambda p: p.write_bytes(pickle.dumps({"model": _Payload(), "position": 0}, protocol=2)),
            "cannot",
        ),
    ],
    ids=["missing", "garbage", "foreign", "pickled-code"],
)
def test_bad_files_raise_checkpoint_error_with_the_path(
    tmp_path: Path, write: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latest.pt"
    if callable(write):
        write(path)
    with pytest.raises(CheckpointError, match=message) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value)
    assert "code ran" not in capsys.readouterr().out  # weights_only: nothing is executed


def test_truncated_checkpoint_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "latest.pt"
    save_checkpoint(path, _state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_restored_rng_states_replay_the_same_draws() -> None:
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    saved = capture_rng({"data": gen})
    first = (torch.rand(4), torch.rand(4, generator=gen))
    restore_rng(saved, {"data": gen})
    second = (torch.rand(4), torch.rand(4, generator=gen))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
