"""The same loop under torchrun: 2 CPU processes (gloo) match one process on the global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnetkit.config import TrainConfig
from resnetkit.errors import ConfigError
from resnetkit.train.distributed import DistEnv, wrap_ddp

# GroupNorm is per-sample, so two ranks of 64 see exactly what one process of 128 sees;
# augmentation is off because each rank draws its own. fp32 keeps rounding out of the way.
_ARGS = [
    "train",
    "--model", "resnet8", "--model-arg", "width=0.5", "--model-arg", "norm=group",
    "--data", "fashion-mnist", "--limit", "1088", "--val-fraction", "0.0588",
    "--epochs", "2", "--batch-size", "128", "--lr", "0.1", "--precision", "fp32",
    "--num-threads", "1", "--no-progress", "--no-eval",
]  # fmt: skip


_NOAUG = "[augment]\ncrop_padding = 0\nhflip = false\n"
_SINGLE = [sys.executable, "-m", "resnetkit.cli.main"]
_TORCHRUN = [
    sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
    "-m", "resnetkit.cli.main",
]  # fmt: skip


def _run(
    cmd: list[str], tmp_path: Path, name: str, *, recipe: str = _NOAUG, args: list[str] = _ARGS
) -> list[dict[str, float]]:
    path = tmp_path / f"{name}.toml"
    path.write_text(recipe)
    out = tmp_path / name
    proc = subprocess.run(
        [*cmd, *args, "--config", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    single = _run(_SINGLE, tmp_path, "single")
    ddp = _run(_TORCHRUN, tmp_path, "ddp")
    assert [m["step"] for m in ddp] == [m["step"] for m in single] == [8, 16]
    for one, two in zip(single, ddp, strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=2e-3)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=2e-3)
    assert not (tmp_path / "ddp" / "checkpoints" / "latest.pt.tmp").exists()
    assert (tmp_path / "ddp" / "model.json").is_file()  # written once, by rank 0


@pytest.mark.slow
def test_the_whitening_bias_can_stop_training_under_ddp(tmp_path: Path) -> None:
    # DDP waits for a gradient of every parameter it was built with; once the stem's bias
    # stops training, the loop must build it again or the next step fails.
    recipe = (
        '[model]\narch = "resnet9_s"\nkwargs = { stem = "whiten", width = 0.5 }\n'
        '[optim]\nname = "muon"\nwhiten_bias_epochs = 1\n'
    )
    args = ["train", *_ARGS[_ARGS.index("--data") :], "--epochs", "3"]  # the recipe's model
    metrics = _run(_TORCHRUN, tmp_path, "ddp", recipe=recipe, args=args)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]


def test_sync_bn_on_cpu_is_refused_with_a_reason() -> None:
    import torch

    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        wrap_ddp(torch.nn.Linear(2, 2), DistEnv(0, 2, 0), torch.device("cpu"), sync_bn=True)
    assert TrainConfig().sync_bn is False
