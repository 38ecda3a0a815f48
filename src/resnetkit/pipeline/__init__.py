"""The gated promotion pipeline: ``train -> evaluate -> gate -> register -> rollout``.

One library call runs it, resumably, and records the gate's verdict and the run's lineage
on the registered version::

    from resnetkit.pipeline import load_pipeline_config, run_pipeline

    result = run_pipeline(load_pipeline_config("pipeline.toml"), name="fashion", out_dir="runs/p1")
    result.blessed, result.candidate, result.checks, result.rollout

See docs/pipeline.md. Names are imported from their submodules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnetkit.lazy import lazy_attributes

if TYPE_CHECKING:
    from resnetkit.pipeline.config import PipelineConfig, load_pipeline_config
    from resnetkit.pipeline.runner import admin_token_from, run_pipeline
    from resnetkit.pipeline.state import STEPS, PipelineResult

_LAZY: dict[str, str] = {
    "PipelineConfig": "resnetkit.pipeline.config",
    "PipelineResult": "resnetkit.pipeline.state",
    "STEPS": "resnetkit.pipeline.state",
    "admin_token_from": "resnetkit.pipeline.runner",
    "load_pipeline_config": "resnetkit.pipeline.config",
    "run_pipeline": "resnetkit.pipeline.runner",
}

__all__ = [
    "STEPS",
    "PipelineConfig",
    "PipelineResult",
    "admin_token_from",
    "load_pipeline_config",
    "run_pipeline",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
