"""Evaluation: metrics, plots, and the eval-mode inference loop behind ``resnetkit eval``.

Example::

    model, card = load_model("runs/fashion")
    spec = PreprocessingSpec.from_dict(card.preprocessing)
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
from resnetkit.evaluate.runner import (
    EVAL_JSON,
    ClassResult,
    EvalReport,
    check_dataset_fits,
    eval_mode,
    evaluate_model,
    predict_log_probs,
    report_from_log_probs,
)

__all__ = [
    "DEFAULT_CALIBRATION_BINS",
    "EVAL_JSON",
    "CalibrationBins",
    "ClassMetrics",
    "ClassResult",
    "EvalReport",
    "calibration_bins",
    "check_dataset_fits",
    "confusion_matrix",
    "eval_mode",
    "evaluate_model",
    "expected_calibration_error",
    "negative_log_likelihood",
    "per_class_metrics",
    "plot_confusion_matrix",
    "plot_reliability_diagram",
    "plot_training_curves",
    "predict_log_probs",
    "read_metrics_jsonl",
    "report_from_log_probs",
    "topk_accuracy",
]
