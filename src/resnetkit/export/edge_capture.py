"""What every edge converter shares: the captured graph, PT2E calibration, converter errors.

Every edge format starts from the same ``torch.export`` program of the model at batch 1
(phones and boards run one image at a time; a static shape lets every converter plan its
memory ahead). A converter that fails is translated into one line that names the op and the
layer it sits in, found by matching the op named in the converter's message against the
captured graph's ``nn_module_stack``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ExportError

__all__ = [
    "CALIBRATION_BATCH",
    "calibrated_pt2e",
    "capture",
    "converter_error",
    "quiet_converters",
]

CALIBRATION_BATCH = 32
_CHATTY_LOGGERS = ("", "torch", "torchao", "executorch", "coremltools", "absl", "jax")
_MAX_MESSAGE_CHARS = 160
# "aten.erfinv.default", "aten::abs(Tensor self)", "converting 'fft_rfft' op"
_OP_PATTERNS = (
    re.compile(r"aten(?:\.|::)([A-Za-z0-9_]+)"),
    re.compile(r"converting '([A-Za-z0-9_]+)' op"),
    re.compile(r"node ([A-Za-z0-9_]+) \("),
)


def capture(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = False) -> Any:
    """``torch.export`` of ``model`` in eval mode on ``example``; batch axis static unless
    ``dynamic_batch`` (calibration runs whole batches through the captured graph).

    Raises:
        ExportError: the model cannot be captured (data-dependent control flow, ...).
    """
    if not isinstance(model, torch.fx.GraphModule):  # PT2E graphs refuse .eval()
        model.eval()
    shapes = None
    if dynamic_batch:
        example = example.expand(2, *example.shape[1:]).contiguous()  # size 1 specialises
        shapes = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    try:
        with quiet_converters():
            return torch.export.export(model, (example,), dynamic_shapes=shapes)
    except Exception as exc:  # torch.export raises many types; all mean "cannot capture"
        raise ExportError(f"torch.export cannot capture {type(model).__name__}: "
                          f"{_first_line(exc)}") from exc  # fmt: skip


def calibrated_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    calibration: torch.Tensor,
    quantizer: Any,
    *,
    fold_quantize: bool,
) -> nn.Module:
    """PT2E static int8: insert ``quantizer``'s observers, run ``calibration`` (normalised
    real training images) through them in batches, and convert to a quantized graph module.

    ``fold_quantize`` stores the weights as int8 constants (ExecuTorch has no kernel for a
    per-channel quantize op left in the graph); LiteRT's converter wants them unfolded, and
    folds them itself. The caller exports the result again at batch 1 for its runtime.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    program = capture(model, example, dynamic_batch=True)
    with quiet_converters():
        prepared = prepare_pt2e(program.module(), quantizer)
        with torch.no_grad():
            for batch in calibration.float().split(CALIBRATION_BATCH):
                prepared(batch)
        converted: nn.Module = convert_pt2e(prepared, fold_quantize=fold_quantize)
    return converted


@contextlib.contextmanager
def quiet_converters() -> Iterator[None]:
    """Keep the converters' warnings, progress lines and INFO logs off the user's terminal."""
    # torch and torchao log through their own handlers, so the root level alone does not
    # reach them ("Failed to load ... _C_mxfp8.so", pytree deprecations at import).
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = text or type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def _op_in(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


def _layer_of(program: Any, op: str) -> str | None:
    """The module path (and class) holding the first node that runs ``op``."""
    for node in program.graph.nodes:
        target = str(getattr(node, "target", ""))
        names = {node.name, target.split(".")[-2] if target.count(".") >= 2 else target}
        if op not in names and not node.name.startswith(op):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "the model's top level"
        path, kind = list(stack.values())[-1]
        name = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1].strip("'>"))
        return f"{path or 'the model'} ({name})"
    return None


def converter_error(fmt: str, exc: BaseException, program: Any | None) -> ExportError:
    """One line for a converter's failure: the op, the layer it is in, the converter's words.

    Args:
        fmt: the format being written (``executorch``, ``tflite``, ``coreml``).
        exc: what the converter raised.
        program: the captured ``torch.export`` program, to find the layer; None if unknown.
    """
    message = str(exc)
    op = _op_in(message)
    where = _layer_of(program, op) if op is not None and program is not None else None
    parts = [f"{fmt} conversion failed"]
    if op is not None:
        parts.append(f" on op {op}")
    if where is not None:
        parts.append(f" in layer {where}")
    return ExportError(f"{''.join(parts)}: {_first_line(exc)}")
