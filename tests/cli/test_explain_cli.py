"""``resnetkit explain`` as a user runs it: one overlay per image, none lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetkit.cli.explain import overlay_paths
from resnetkit.cli.main import main
from tests.registry.rundirs import make_run_dir


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def test_images_that_share_a_name_get_one_overlay_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run_dir(tmp_path / "run")
    first, second = _photo(tmp_path / "shirt.png", 0), _photo(tmp_path / "d2" / "shirt.png", 1)
    out = tmp_path / "cams"
    argv = ["explain", "--model", str(run), str(first), str(second), "-o", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    overlays = [Path(r["overlay"]) for r in report]
    assert [r["image"] for r in report] == [str(first), str(second)]
    assert overlays == [out / "shirt-gradcam.png", out / "shirt-2-gradcam.png"]
    assert sorted(out.iterdir()) == sorted(overlays)
    assert overlays[0].read_bytes() != overlays[1].read_bytes()  # two images, two overlays


def test_overlay_names_are_unique_and_follow_the_command_line_order() -> None:
    images = [Path("a/x.png"), Path("b/x.jpg"), Path("x-2.png"), Path("x.png"), Path("y.png")]
    names = [p.name for p in overlay_paths(images, Path("cams"), "gradcam++")]
    assert names == [
        "x-gradcampp.png",
        "x-2-gradcampp.png",
        "x-2-2-gradcampp.png",  # a file really named x-2 keeps its own stem
        "x-3-gradcampp.png",
        "y-gradcampp.png",
    ]
