"""``run_pipeline``: the steps in order, resumable, ending in ``pipeline.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from resnetkit.errors import ConfigError
from resnetkit.fileio import check_output_dir
from resnetkit.pipeline.config import PipelineConfig
from resnetkit.pipeline.state import (
    PIPELINE_JSON,
    STATE_FILE,
    STEPS,
    PipelineResult,
    StepState,
    write_json,
)
from resnetkit.pipeline.steps import STEP_FUNCTIONS, Progress, RunContext

__all__ = ["TOKEN_ENV", "admin_token_from", "run_pipeline", "run_steps"]

TOKEN_ENV = "RESNETKIT_ADMIN_TOKEN"


def admin_token_from(path: str | os.PathLike[str] | None) -> str | None:
    """The admin token: the file's first line, else ``$RESNETKIT_ADMIN_TOKEN``, else None.

    Raises:
        ConfigError: the file cannot be read or is empty.
    """
    if path is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--admin-token-file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise ConfigError(f"--admin-token-file {path} is empty")
    return token


def _quiet(step: str, message: str) -> None:
    del step, message


def _result(ctx: RunContext) -> PipelineResult:
    state = ctx.state
    from resnetkit.pipeline.steps import lineage

    gated = state.outputs("gate")
    return PipelineResult(
        blessed=bool(gated["blessed"]),
        candidate=state.outputs("register").get("candidate"),
        baseline=gated.get("baseline"),
        checks=list(gated["checks"]),
        rollout=state.outputs("rollout"),
        run_id=state.run_id,
        out_dir=str(ctx.out),
        lineage=lineage(ctx),
        steps={k: {"status": v.get("status")} for k, v in state.steps.items()},
    )


def _validate(config: PipelineConfig, name: str, server: str | None, token: str | None) -> None:
    """Everything that can be checked before the first expensive step."""
    from resnetkit.registry.refs import validate_name

    validate_name(name)
    if config.train.recipe is not None and not Path(config.train.recipe).is_file():
        raise ConfigError(f"[train] recipe {config.train.recipe} does not exist")
    feedback = config.data.feedback
    if feedback is not None and not (Path(feedback) / "manifest.json").is_file():
        raise ConfigError(
            f"[data] feedback {feedback}: no export there (no manifest.json); write one with "
            "`resnetkit data export-feedback`"
        )
    if config.data.eval is not None:  # a missing gate set stops here, not after training
        from resnetkit.data import load_dataset

        load_dataset(config.data.eval, "test", data_dir=config.data.eval_dir, limit=1)
    if server is not None:
        from resnetkit.pipeline.canary import check_server

        check_server(server, name, token)


def run_pipeline(
    config: PipelineConfig,
    *,
    name: str,
    candidate: str | None = None,
    server: str | None = None,
    out_dir: str | os.PathLike[str],
    admin_token: str | None = None,
    progress: Progress | None = None,
) -> PipelineResult:
    """Train (or take ``candidate``), evaluate beside production, gate, register, roll out.

    Args:
        config: the pipeline file's settings (:func:`load_pipeline_config`).
        name: the registered model the candidate becomes a version of.
        candidate: an existing model (path or registry reference): skips training.
        server: a running server's URL: a blessed candidate's canary starts there.
        out_dir: the run's folder (state, predictions, ``pipeline.json``); rerunning with the
            same folder and inputs resumes a killed run, and does nothing for a finished one.
        admin_token: the server's admin token (needed with ``server``).
        progress: called with ``(step, message)`` as the run goes.

    Returns:
        The result, also written as ``pipeline.json``.

    Raises:
        ConfigError: bad settings, or ``out_dir`` holds a run with other inputs.
        ServeError: the server cannot be reached, or refuses the rollout.
        ResNetKitError: from a step (data, training, registry); the state file keeps where
            the run was, so the same call resumes there.
    """
    result = run_steps(
        config, name=name, candidate=candidate, server=server, out_dir=out_dir,
        admin_token=admin_token, progress=progress,
    )  # fmt: skip
    assert result is not None  # every step ran
    return result


def run_steps(
    config: PipelineConfig,
    *,
    name: str,
    candidate: str | None = None,
    server: str | None = None,
    out_dir: str | os.PathLike[str],
    admin_token: str | None = None,
    progress: Progress | None = None,
    until: str | None = None,
) -> PipelineResult | None:
    """:func:`run_pipeline`, stopping after the step ``until`` (one engine task per step,
    as the KFP spec runs it); None when it stopped before the last step."""
    report = progress or _quiet
    ctx, finished = _open_run(config, name, candidate, server, out_dir, admin_token, report, until)
    existing = ctx.out / PIPELINE_JSON
    if finished is not None:
        return finished
    for step in STEPS:
        if ctx.state.done(step):
            report(step, "done earlier")
        else:
            ctx.state.start(step)
            report(step, "started")
            ctx.state.finish(step, STEP_FUNCTIONS[step](ctx))
            report(step, "done")
        if step == until:
            break
    if not ctx.state.finished:
        return None
    result = _result(ctx)
    write_json(existing, result.to_dict())
    return result


def _open_run(
    config: PipelineConfig, name: str, candidate: str | None, server: str | None,
    out_dir: str | os.PathLike[str], admin_token: str | None, report: Progress,
    until: str | None,
) -> tuple[RunContext, PipelineResult | None]:  # fmt: skip
    """The run's context, and its result when it finished earlier (nothing left to do)."""
    if until is not None and until not in STEPS:
        raise ConfigError(f"--until {until!r}: use one of {', '.join(STEPS)}")
    out = check_output_dir(out_dir, what="--out")
    inputs: dict[str, Any] = {"name": name, "candidate": candidate, "server": server,
                              "config": config.digest()}  # fmt: skip
    existing = out / PIPELINE_JSON
    if (out / STATE_FILE).is_file():  # a run to resume, or one that finished
        state = StepState.open(out, inputs)
        ctx = RunContext(config, name, candidate, server, admin_token, out, state, report)
        if state.finished and existing.is_file():
            report("pipeline", f"finished earlier: {existing}")
            result = json.loads(existing.read_text(encoding="utf-8"))
            return ctx, PipelineResult.from_dict(result)
        _validate(config, name, server if not state.done("rollout") else None, admin_token)
        return ctx, None
    # A new run: bad input leaves no state behind, so the corrected call starts afresh.
    _validate(config, name, server, admin_token)
    state = StepState.open(out, inputs)
    return RunContext(config, name, candidate, server, admin_token, out, state, report), None
