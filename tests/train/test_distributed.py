"""The same loop under torchrun: 2 CPU processes (gloo) match one process on the global batch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resnetkit.config import HardExamplesConfig, TrainConfig, to_dict
from resnetkit.errors import ConfigError
from resnetkit.train.distributed import DistEnv, wrap_ddp

from .conftest import tiny_config

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


# Each rank writes its loss table and the images it trained on in every epoch.
_HARD_RANKS = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from resnetkit.config import TrainConfig, from_dict
    from resnetkit.train.loop import Trainer

    class Seen(Trainer):
        seen = {}
        def _train_step(self, images, labels, flips, indices=None):
            self.seen.setdefault(self.epoch, []).extend(indices.tolist())
            return super()._train_step(images, labels, flips, indices)

    out = Path(sys.argv[2])
    trainer = Seen(from_dict(TrainConfig, json.loads(sys.argv[1])), out)
    trainer.fit()
    torch.save({"losses": trainer.hard.losses, "seen": trainer.seen},
               out.parent / f"rank{trainer.env.rank}.pt")
    """
)


@pytest.mark.slow
def test_the_ranks_share_one_loss_table_and_rebuild_ddp_when_the_whitening_bias_stops(
    tmp_path: Path,
) -> None:
    # Each rank records the losses of its half of every batch; unless they are merged, the
    # ranks rank the images differently and a hard epoch trains some twice, others never.
    # And DDP waits for a gradient of every parameter it was built with: once the stem's bias
    # stops training (after epoch 1), the loop must build it again or the next step fails.
    base = tiny_config()
    cfg = tiny_config(
        epochs=4,
        hard_examples=HardExamplesConfig(epochs=2, fraction=0.4, random_fraction=0.1),
        model=dataclasses.replace(
            base.model, arch="resnet9_s", kwargs={"stem": "whiten", "width": 0.5}
        ),
        optim=dataclasses.replace(base.optim, name="muon", whiten_bias_epochs=1),
    )
    script = tmp_path / "ranks.py"
    script.write_text(_HARD_RANKS)
    launcher = _TORCHRUN[: _TORCHRUN.index("-m", 3)]  # torchrun without "-m resnetkit..."
    proc = subprocess.run(
        [*launcher, str(script), json.dumps(to_dict(cfg)), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert torch.equal(ranks[0]["losses"], ranks[1]["losses"])
    assert ranks[0]["losses"].min() > 0  # every image's loss is known
    for epoch, count in [(0, 1024), (1, 512), (2, 512), (3, 1024)]:
        both = ranks[0]["seen"][epoch] + ranks[1]["seen"][epoch]
        assert len(both) == len(set(both)) == count, epoch  # each image once, by one rank
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3, 4]


def test_sync_bn_on_cpu_is_refused_with_a_reason() -> None:
    import torch

    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        wrap_ddp(torch.nn.Linear(2, 2), DistEnv(0, 2, 0), torch.device("cpu"), sync_bn=True)
    assert TrainConfig().sync_bn is False
