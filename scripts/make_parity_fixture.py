"""Write the torchvision parity fixture: state-dict layouts and float64 logits.

For each torchvision ResNet below, built with ``weights=None``, the script reads the
state-dict key names and shapes, fills them with the deterministic rule in
``tests/models/parity_rule.py`` (no RNG, so the values are the same under any torch),
loads them with ``strict=True`` into the float64 model, runs the rule's input in eval
mode, and stores keys, shapes and logits in ``tests/models/fixtures/torchvision_parity.json``.
``tests/models/test_torchvision_parity.py`` then checks our models against that file
without torchvision.

torchvision is not a dependency of resnetkit, so this runs in its own, gitignored
virtual environment. To rerun it from the repository root::

    python3 -m venv .venv-parity
    .venv-parity/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-parity/bin/python scripts/make_parity_fixture.py

then commit the regenerated fixture. Rerun it whenever ``parity_rule.py`` changes (and
bump its ``RULE_VERSION``) or to check against a newer torchvision.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torchvision

REPO_ROOT = Path(__file__).resolve().parent.parent
RULE_PATH = REPO_ROOT / "tests" / "models" / "parity_rule.py"
DEFAULT_OUT = REPO_ROOT / "tests" / "models" / "fixtures" / "torchvision_parity.json"
MODEL_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "resnext50_32x4d",
)
# 12 significant digits: far below the test's 1e-5 tolerance, and half the bytes of repr().
LOGIT_DIGITS = 12
INLINE_MAX_CHARS = 100


def load_rule() -> ModuleType:
    """Import ``tests/models/parity_rule.py`` by path (``tests`` is not a package here)."""
    spec = importlib.util.spec_from_file_location("parity_rule", RULE_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {RULE_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_entry(name: str, rule: ModuleType, image: torch.Tensor) -> dict[str, Any]:
    """Build one torchvision model, fill it with the rule, and record its layout and logits."""
    # float64 before loading, so the rule's float64 values are not rounded to float32.
    model = getattr(torchvision.models, name)(weights=None).double().eval()
    layout = [(key, list(t.shape)) for key, t in model.state_dict().items()]
    state = rule.fill_state_dict(layout)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = model(image)  # (B, 1000)
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"{name}: non-finite logits; the rule's scales need adjusting")
    rows = [[float(f"{v:.{LOGIT_DIGITS}g}") for v in row] for row in logits.tolist()]
    print(
        f"{name:>16}: {len(layout)} entries, logits std {logits.std().item():.4g}, "
        f"max |logit| {logits.abs().max().item():.4g}"
    )
    return {
        "state_dict": [[key, shape] for key, shape in layout],
        "state_dict_checksum": rule.checksum(state),
        "logits": rows,
    }


def to_json(obj: Any, indent: int = 0) -> str:
    """Serialise with short lists and lists of numbers on one line, for readable diffs."""
    flat = json.dumps(obj, separators=(",", ":"))
    numbers = isinstance(obj, list) and all(isinstance(v, (int, float)) for v in obj)
    if len(flat) <= INLINE_MAX_CHARS or numbers or not isinstance(obj, (dict, list)):
        return flat
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + to_json(v, indent + 1) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; this is a committed file
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """Generate the fixture; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture path to write")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    rule = load_rule()
    image = rule.make_input()  # (B, 3, H, W), float64
    fixture = {
        "generator": "scripts/make_parity_fixture.py",
        "rule_version": rule.RULE_VERSION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "dtype": "float64",
        "logit_digits": LOGIT_DIGITS,
        "input": {"shape": list(image.shape), "checksum": float(image.abs().sum())},
        "models": {name: model_entry(name, rule, image) for name in MODEL_NAMES},
    }
    write_atomic(args.out, to_json(fixture) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
