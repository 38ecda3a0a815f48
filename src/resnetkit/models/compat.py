"""Load torchvision, timm and our own checkpoints into zoo models.

Our ImageNet ResNets use torchvision's state-dict keys, so its checkpoints load unchanged;
timm's ResNet-B/C/D checkpoints share those keys except for a few renames handled here.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from resnetkit.errors import CheckpointError

__all__ = ["LoadReport", "adapt_input_conv", "load_pretrained", "read_state_dict"]

_PREFIXES = ("module.", "model.", "backbone.", "_orig_mod.")
_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
# (pattern, replacement) for checkpoints written by timm.
_TIMM_RENAMES = (
    (re.compile(r"^head\.fc\."), "fc."),
    (re.compile(r"\.se\.conv_reduce\."), ".se.fc1."),
    (re.compile(r"\.se\.conv_expand\."), ".se.fc2."),
)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, grouped by module so it stays readable."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_classifier: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every tensor of the model came from the checkpoint."""
        return not self.missing and not self.unexpected and not self.dropped_classifier

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors"]
        lines += [f"adapted {a}" for a in self.adapted]
        if self.dropped_classifier:
            lines.append(f"classifier re-initialised: {', '.join(self.dropped_classifier)}")
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            for module, count in group_keys(keys).items():
                lines.append(f"{label}: {module} ({count} tensor{'s' * (count != 1)})")
        return "\n".join(lines)


def group_keys(keys: Iterable[str], depth: int = 2) -> dict[str, int]:
    """Count keys per module prefix (``layer4.1.conv1.weight`` → ``layer4.1``)."""
    groups: dict[str, int] = defaultdict(int)
    for key in keys:
        parts = key.split(".")[:-1] or [key]
        groups[".".join(parts[:depth])] += 1
    return dict(groups)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` file (never unpickled).

    Raises:
        CheckpointError: when the file is missing, unreadable or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise CheckpointError(f"cannot read checkpoint {p}: {exc}") from exc
    for key in _CONTAINER_KEYS:  # training checkpoints nest the weights
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{p} holds no state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{p} holds no tensors")
    return tensors


def _normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        for pattern, repl in _TIMM_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a first-conv weight ``(O, I, k, k)`` to ``in_chans`` input channels.

    One channel sums the pretrained channels (grayscale = R + G + B); more channels repeat
    them and rescale so the expected activation is unchanged.
    """
    orig = weight.shape[1]
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / orig)
    return weight.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :in_chans] * (orig / in_chans)


def _first_conv_key(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return f"{name}.weight"
    return None


def load_pretrained(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> LoadReport:
    """Load a checkpoint (ours, torchvision or timm) into ``model``.

    Strips ``module.``/``model.``/``backbone.`` prefixes, renames timm keys, adapts the first
    convolution when ``in_chans`` differs, and drops the classifier when ``num_classes``
    differs (it stays freshly initialised).

    Args:
        strict: raise when any other tensor is missing or unexpected.

    Raises:
        CheckpointError: for an unreadable file, a shape that cannot be adapted, or (with
            ``strict``) missing or unexpected tensors, grouped by module.
    """
    state = _normalise_keys(read_state_dict(path))
    own = model.state_dict()
    report = LoadReport()
    conv_key = _first_conv_key(model)
    if conv_key in state and conv_key in own and state[conv_key].shape != own[conv_key].shape:
        old = tuple(state[conv_key].shape)
        state[conv_key] = adapt_input_conv(state[conv_key], own[conv_key].shape[1])
        report.adapted.append(f"{conv_key} {old} -> {tuple(own[conv_key].shape)}")
    fc = getattr(model, "fc", None)
    head_keys = (
        {f"fc.{n}" for n, _ in fc.named_parameters()} if isinstance(fc, nn.Module) else set()
    )
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    report.dropped_classifier = [k for k in mismatched if k in head_keys]
    bad = [k for k in mismatched if k not in head_keys]
    if bad:
        details = "; ".join(
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in bad[:5]
        )
        raise CheckpointError(f"{path}: {len(bad)} tensors do not fit the model: {details}")
    for key in report.dropped_classifier:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    report.missing = [k for k in result.missing_keys if k not in report.dropped_classifier]
    report.unexpected = list(result.unexpected_keys)
    report.loaded = len(state) - len(report.unexpected)
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"{path} does not match the model:\n{report}")
    return report
