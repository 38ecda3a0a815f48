"""The PyTorch backend: a module behind :class:`~resnetkit.export.runtime.InferenceBackend`.

Kept apart from :mod:`resnetkit.export.runtime` so that ONNX serving never imports torch.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.onnxio import EMBEDDING_NAME, OUTPUT_NAME

__all__ = ["TorchBackend"]

Batch = np.ndarray | torch.Tensor


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    ref = next(model.parameters(), None)
    return ref.device if ref is not None else torch.device("cpu")


class TorchBackend:
    """A PyTorch module behind the backend interface.

    Args:
        model: the module to run (eval mode is set on it). For the "folded + channels_last"
            backend pass ``resnetkit.compress.fold_batchnorm(model, channels_last=True)``.
        name: e.g. ``torch-eager``, ``torch-folded-cl``, ``torch-bf16``.
        device: where to run; default: where the model's parameters are.
        channels_last: feed inputs as NHWC (match a ``channels_last`` model).
        autocast_dtype: e.g. ``torch.bfloat16`` to run under ``torch.autocast``; outputs
            come back as float32.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str = "torch-eager",
        device: str | torch.device | None = None,
        channels_last: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        start = time.perf_counter()
        self.name = name
        self._device = _resolve_device(model, device)
        self.device = str(self._device)
        self.model = model.to(self._device).eval()
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.threads = torch.get_num_threads()
        has_head = hasattr(model, "forward_features") and hasattr(model, "forward_head")
        self.outputs: tuple[str, ...] = (
            (OUTPUT_NAME, EMBEDDING_NAME) if has_head else (OUTPUT_NAME,)
        )
        self.size_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        self.load_time_s = time.perf_counter() - start

    def _input(self, batch: Batch) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(batch)) if not isinstance(batch, torch.Tensor) else batch
        x = x.to(self._device, torch.float32, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self.autocast_dtype)

    def predict(self, batch: Batch) -> np.ndarray:
        """Logits ``(B, num_classes)`` float32."""
        with torch.inference_mode(), self._autocast():
            logits = self.model(self._input(batch))
        return logits.float().cpu().numpy()

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Logits and, for zoo models, the pre-logits embedding, as float32 arrays."""
        if EMBEDDING_NAME not in self.outputs:
            return {OUTPUT_NAME: self.predict(batch)}
        model: Any = self.model
        with torch.inference_mode(), self._autocast():
            features = model.forward_features(self._input(batch))
            embedding = model.forward_head(features, pre_logits=True)
            logits = model.forward_head(features)
        return {
            OUTPUT_NAME: logits.float().cpu().numpy(),
            EMBEDDING_NAME: embedding.float().cpu().numpy(),
        }
