"""Make trained models smaller and faster for inference, with a measured cost.

* :func:`fold_batchnorm` folds BatchNorm into the neighbouring convolution (and optionally
  converts to ``channels_last``); :func:`plan_folding` says what folds and what cannot.
* :func:`quantize_onnx` / :func:`quantize_with_budget` make a static int8 (QDQ, s8
  per-channel weights, u8 activations) ONNX model and check its accuracy on real test data.

Structured pruning (``prune.py``: fewer filters, a smaller dense model), unstructured
magnitude pruning (``sparse.py``: zeroed weights, same shapes, no faster on dense kernels)
and distillation (``distill.py``) build on the training loop; they give plain ``nn.Module``
objects that the functions here accept unchanged.
"""

from resnetkit.compress.fuse import FoldPair, FoldPlan, fold_batchnorm, plan_folding
from resnetkit.compress.quantize import (
    CALIBRATION_METHODS,
    QuantizationReport,
    check_quantizable,
    evaluate_onnx_top1,
    quantize_onnx,
    quantize_with_budget,
)

__all__ = [
    "CALIBRATION_METHODS",
    "FoldPair",
    "FoldPlan",
    "QuantizationReport",
    "check_quantizable",
    "evaluate_onnx_top1",
    "fold_batchnorm",
    "plan_folding",
    "quantize_onnx",
    "quantize_with_budget",
]
