"""Evaluation: metrics, plots, and the eval-mode inference loop behind ``resnetkit eval``.

Example::

    model, card = load_model("runs/fashion")
    spec = card.spec()
    test = load_dataset("fashion-mnist", "test")
    report = evaluate_model(model, test, spec, tta_flip=True)
    report.save("runs/fashion")  # eval.json + plots/*.png
"""

from resnetkit.evaluate.metrics import (
    DEFAULT_CALIBRATION_BINS,
    CalibrationBins,
    ClassMetrics,
    calibration_bins,
    confusion_matrix,
    expected_calibration_error,
    negative_log_likelihood,
    per_class_metrics,
    topk_accuracy,
)
from resnetkit.evaluate.plots import (
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_training_curves,
    read_metrics_jsonl,
)
from resnetkit.evaluate.precision import (
    PRECISIONS,
    autocast,
    precision_name,
    resolve_device,
    resolve_precision,
)
from resnetkit.evaluate.runner import (
    EVAL_JSON,
    ClassResult,
    EvalReport,
    check_dataset_fits,
    eval_mode,
    evaluate_model,
    map_batches,
    predict_embeddings,
    predict_log_probs,
    report_from_log_probs,
    tta_views,
)

__all__ = [
    "DEFAULT_CALIBRATION_BINS",
    "EVAL_JSON",
    "PRECISIONS",
    "CalibrationBins",
    "ClassMetrics",
    "ClassResult",
    "EvalReport",
    "autocast",
    "calibration_bins",
    "check_dataset_fits",
    "confusion_matrix",
    "eval_mode",
    "evaluate_model",
    "expected_calibration_error",
    "map_batches",
    "negative_log_likelihood",
    "per_class_metrics",
    "plot_confusion_matrix",
    "plot_reliability_diagram",
    "plot_training_curves",
    "precision_name",
    "predict_embeddings",
    "predict_log_probs",
    "read_metrics_jsonl",
    "report_from_log_probs",
    "resolve_device",
    "resolve_precision",
    "topk_accuracy",
    "tta_views",
]
