"""The five steps, each a plain library call from declared inputs to declared outputs.

``train -> evaluate -> gate -> register -> rollout``. Each takes the run's
:class:`RunContext` and returns a JSON-able dict of outputs, which the runner records in the
step-state file; a later step reads only those outputs (and the files they name), so a
resumed run continues from what the killed one recorded.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetkit.errors import ConfigError, RegistryError
from resnetkit.pipeline.config import PipelineConfig
from resnetkit.pipeline.state import StepState, write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from resnetkit.config import TrainConfig
    from resnetkit.data import ImageDataset
    from resnetkit.export import LoadedModel
    from resnetkit.registry import RegistryStore

__all__ = ["STEP_FUNCTIONS", "RunContext"]

Progress = Callable[[str, str], None]
CANDIDATE_ALIAS = "candidate"
PRODUCTION_ALIAS = "production"


@dataclasses.dataclass
class RunContext:
    """What every step may read: the settings, the run's state, the output folder."""

    config: PipelineConfig
    name: str
    candidate: str | None
    server: str | None
    admin_token: str | None
    out: Path
    state: StepState
    progress: Progress

    def store(self) -> RegistryStore:
        """The registry (opened per use: a step may run for hours)."""
        from resnetkit.registry.store import open_registry

        return open_registry(self.config.registry)

    def source(self) -> str:
        """The candidate as a reference: ``--candidate``, or the trained run's folder.

        Step outputs name files relative to the output folder, so the folder can move
        between steps (a KFP artifact copied from task to task)."""
        trained = self.state.outputs("train")
        return str(self.out / trained["source"]) if trained["trained"] else str(trained["source"])

    def load(self, ref: str) -> LoadedModel:
        """A model by any reference, in this run's registry."""
        from resnetkit.export import load_model_ref
        from resnetkit.registry.store import registry_url

        return load_model_ref(ref, registry=registry_url(self.config.registry))


# -- train -------------------------------------------------------------------------------


def production_version(ctx: RunContext) -> str | None:
    """NAME's production version now (``name:V``), None when there is none."""
    with ctx.store() as store:
        try:
            return store.resolve(f"{ctx.name}@{PRODUCTION_ALIAS}").ref
        except RegistryError:
            return None


def _recipe(ctx: RunContext, baseline: str | None) -> tuple[TrainConfig, str]:
    from resnetkit.config import TrainConfig, from_dict, load_toml

    section = ctx.config.train
    if section.recipe is not None:
        data, where = load_toml(section.recipe), section.recipe
    elif baseline is not None:
        with ctx.store() as store:
            text = store.resolve(baseline).run_config
        if not text:
            raise ConfigError(
                f"{baseline} has no recorded training config; set [train] recipe in the "
                "pipeline file, or pass --candidate"
            )
        data, where = tomllib.loads(text), f"{baseline} (its recorded config)"
    else:
        raise ConfigError(
            f"{ctx.name} has no production version to retrain: set [train] recipe in the "
            "pipeline file, or pass --candidate"
        )
    cfg = from_dict(TrainConfig, data)
    if section.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=section.epochs)
    if section.seed is not None:
        cfg = dataclasses.replace(cfg, seed=section.seed)
    return cfg, where


def _mix_feedback(ctx: RunContext, cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """Write base + feedback as the base source's IDX files; train on those."""
    from resnetkit.data import fingerprint, load_dataset
    from resnetkit.pipeline.datasets import MIXABLE, load_feedback, write_mixed_idx

    folder = ctx.config.data.feedback
    assert folder is not None
    if cfg.data.name not in MIXABLE:
        raise ConfigError(
            f"data.feedback: mixing into {cfg.data.name!r} is not supported; the base dataset "
            f"must be one of {', '.join(MIXABLE)}"
        )
    train = load_dataset(cfg.data.name, "train", data_dir=cfg.data.data_dir, limit=cfg.data.limit)
    test = load_dataset(
        cfg.data.name, "test", data_dir=cfg.data.data_dir, limit=cfg.data.test_limit
    )
    feedback = load_feedback(folder, train)
    if feedback.train is None:
        raise ConfigError(f"data.feedback {folder} has no train/ images to learn from")
    ctx.progress("train", f"mixing {len(feedback.train)} feedback images into {len(train)}")
    counts = write_mixed_idx(
        ctx.out / "data" / "mixed", train, test, feedback.train, ctx.config.data.feedback_fraction
    )
    data = dataclasses.replace(cfg.data, data_dir=str(ctx.out / "data" / "mixed"), limit=None)
    lineage = {"base": fingerprint(train), "feedback_train": fingerprint(feedback.train), **counts}
    return dataclasses.replace(cfg, data=data), lineage


def step_train(ctx: RunContext) -> dict[str, Any]:
    """Train the candidate (or take ``--candidate``); fix the baseline for the whole run."""
    baseline = production_version(ctx)
    if ctx.candidate is not None:
        loaded = ctx.load(ctx.candidate)  # a candidate that cannot load stops here
        return {"source": ctx.candidate, "trained": False, "baseline": baseline,
                "label": loaded.identity.label}  # fmt: skip
    from resnetkit.contract import MODEL_WEIGHTS, read_summary
    from resnetkit.train import train
    from resnetkit.train.rundir import has_checkpoint

    cfg, recipe = _recipe(ctx, baseline)
    eval_data = {"name": cfg.data.name, "data_dir": cfg.data.data_dir}
    mixed: dict[str, Any] = {}
    if ctx.config.data.feedback is not None:
        cfg, mixed = _mix_feedback(ctx, cfg)
    run_dir = ctx.out / "train"
    if not (run_dir / MODEL_WEIGHTS).is_file():
        resume = has_checkpoint(run_dir)
        ctx.progress(
            "train", f"{'resuming' if resume else 'training'} {cfg.model.arch} in {run_dir}"
        )
        train(cfg, run_dir, resume=resume)
    summary = read_summary(run_dir)
    dataset = summary.get("dataset", {})
    return {
        "source": run_dir.name,
        "trained": True,
        "baseline": baseline,
        "recipe": recipe,
        "eval_data": eval_data,
        "train_fingerprint": dataset.get("fingerprint") if isinstance(dataset, dict) else None,
        "mix": mixed,
    }


# -- evaluate ----------------------------------------------------------------------------


def _test_set(ctx: RunContext, candidate: LoadedModel) -> ImageDataset:
    from resnetkit.data import has_fixed_shape, load_dataset

    section = ctx.config.data
    trained = ctx.state.outputs("train").get("eval_data") or {}
    name = section.eval or trained.get("name")
    data_dir = section.eval_dir if section.eval else trained.get("data_dir")
    if name is None:
        known = candidate.data_config()
        if known is None:
            raise ConfigError(
                f"{candidate.identity.label} does not say what data it was trained on; set "
                "[data] eval in the pipeline file"
            )
        name, data_dir = known.name, known.data_dir
    spec = candidate.spec
    if has_fixed_shape(str(name)):
        return load_dataset(str(name), "test", data_dir=data_dir, limit=section.eval_limit)
    return load_dataset(
        str(name), "test", data_dir=data_dir, limit=section.eval_limit, image_size=spec.size,
        channels=spec.channels,
    )  # fmt: skip


def gate_sets(ctx: RunContext, candidate: LoadedModel) -> dict[str, ImageDataset]:
    """The frozen sets: the test split and, with feedback, the production holdout."""
    from resnetkit.pipeline.datasets import load_feedback

    sets = {"test": _test_set(ctx, candidate)}
    if ctx.config.data.feedback is not None:
        holdout = load_feedback(ctx.config.data.feedback, sets["test"]).holdout
        if holdout is not None:
            sets["holdout"] = holdout
    return sets


def step_evaluate(ctx: RunContext) -> dict[str, Any]:
    """Candidate and baseline on the same frozen sets, as the server would run them."""
    from resnetkit.data import fingerprint
    from resnetkit.pipeline.gate import predict, robustness_evaluation, served_artifact_budget

    trained = ctx.state.outputs("train")
    artifact = ctx.config.gate.artifact
    candidate = ctx.load(ctx.source())
    baseline_ref = trained.get("baseline")
    baseline = ctx.load(baseline_ref) if baseline_ref else None
    files: dict[str, dict[str, str]] = {}
    sets: dict[str, Any] = {}
    frozen = gate_sets(ctx, candidate)
    for set_name, dataset in frozen.items():
        ctx.progress("evaluate", f"{set_name}: {len(dataset)} images")
        files[set_name] = {}
        for role, model in (("candidate", candidate), ("baseline", baseline)):
            if model is None:
                continue
            path = Path("eval") / f"{role}-{set_name}.npz"
            predict(model, dataset, artifact).save(ctx.out / path)
            files[set_name][role] = str(path)
        sets[set_name] = {"images": len(dataset), "fingerprint": fingerprint(dataset)}
    robustness = robustness_evaluation(
        candidate, baseline, frozen["test"], ctx.config.gate,
        progress=lambda message: ctx.progress("evaluate", message),
    )  # fmt: skip
    ctx.progress("evaluate", f"latency and size of the {artifact} artifact")
    return {
        "baseline": baseline_ref,
        "artifact": artifact,
        "classes": list(frozen["test"].classes),
        "sets": sets,
        "files": files,
        "budget": served_artifact_budget(candidate, artifact),
        "robustness": robustness,
    }


# -- gate --------------------------------------------------------------------------------


def step_gate(ctx: RunContext) -> dict[str, Any]:
    """The checks and the verdict, from the evaluate step's predictions."""
    from resnetkit.pipeline.gate import Predictions, gate_checks

    evaluated = ctx.state.outputs("evaluate")
    sets = {}
    for set_name, paths in evaluated["files"].items():
        base = Predictions.load(ctx.out / paths["baseline"]) if "baseline" in paths else None
        sets[set_name] = (Predictions.load(ctx.out / paths["candidate"]), base)
    checks = gate_checks(
        sets, tuple(evaluated["classes"]), evaluated["budget"], ctx.config.gate,
        robustness=evaluated.get("robustness"),
    )  # fmt: skip
    blessed = all(c["passed"] for c in checks)
    write_json(ctx.out / "gate.json", {"blessed": blessed, "checks": checks})
    return {"blessed": blessed, "baseline": evaluated["baseline"], "checks": checks}


# -- register ----------------------------------------------------------------------------


def lineage(ctx: RunContext) -> dict[str, Any]:
    """What the run used: data fingerprints, the baseline, the config, the candidate's source."""
    trained, evaluated = ctx.state.outputs("train"), ctx.state.outputs("evaluate")
    data = {name: s["fingerprint"] for name, s in evaluated["sets"].items()}
    if trained.get("train_fingerprint"):
        data["train"] = trained["train_fingerprint"]
    if trained.get("mix"):
        data["mix"] = trained["mix"]
    return {
        "pipeline_run": ctx.state.run_id,
        "data": data,
        "feedback": ctx.config.data.feedback,
        "baseline": evaluated["baseline"],
        "candidate_source": trained["source"],
        "trained": trained["trained"],
        "recipe": trained.get("recipe"),
        "artifact": evaluated["artifact"],
        "config": ctx.config.to_dict(),
    }


def _own_version(ctx: RunContext, store: RegistryStore, source: str) -> str | None:
    """``name:V`` when ``--candidate`` is already a version of NAME (gated in place)."""
    from resnetkit.registry.refs import RegistryRef, parse_ref

    if Path(source).exists():
        return None
    parsed = parse_ref(source)
    if isinstance(parsed, RegistryRef) and parsed.name == ctx.name:
        return store.resolve(parsed).ref
    return None


def step_register(ctx: RunContext) -> dict[str, Any]:
    """Register the candidate with its blessing and lineage, atomically; a blessed one gets
    the ``candidate`` alias in the same transaction, a not-blessed one no alias."""
    from resnetkit.export import check_loadable
    from resnetkit.registry.records import Blessing
    from resnetkit.registry.store import RegistrationOptions

    gated = ctx.state.outputs("gate")
    blessed = bool(gated["blessed"])
    aliases = (CANDIDATE_ALIAS,) if blessed else ()
    source = ctx.source()
    blessing = Blessing(ctx.state.run_id, blessed, gated["baseline"], tuple(gated["checks"]),
                        lineage(ctx))  # fmt: skip
    reason = f"pipeline run {ctx.state.run_id[:12]}: " + ("blessed" if blessed else "not blessed")
    with ctx.store() as store:
        done = store.blessing_for_run(ctx.state.run_id)  # registered before a kill
        if done is None:
            own = _own_version(ctx, store, source)
            if own is not None:
                done = store.record_blessing(own, blessing, aliases=aliases, reason=reason)
            else:
                folder = ctx.load(source)
                path = folder.onnx_file or folder.folder
                options = RegistrationOptions(
                    aliases=aliases, reason=reason, blessing=blessing,
                    description=f"resnetkit pipeline run {ctx.state.run_id}",
                    tags={"pipeline_run": ctx.state.run_id[:64]},
                )  # fmt: skip
                info = store.register(path, ctx.name, options, check=check_loadable)
                done = store.blessings(info.ref)[-1]
    ctx.progress("register", f"{done.ref}: {'blessed' if blessed else 'NOT blessed'}")
    return {"candidate": done.ref, "version": done.version, "aliases": list(aliases)}


# -- rollout -----------------------------------------------------------------------------


def step_rollout(ctx: RunContext) -> dict[str, Any]:
    """With ``--server`` and a blessed candidate: the canary rollout and its outcome."""
    from resnetkit.pipeline.canary import run_canary

    if not ctx.state.outputs("gate")["blessed"]:
        return {"state": "not_started", "reason": "not blessed: no rollout"}
    if ctx.server is None:
        return {"state": "skipped", "reason": f"no --server: {ctx.name}@{CANDIDATE_ALIAS} moved"}
    assert ctx.admin_token is not None  # checked before the first step
    registered = ctx.state.outputs("register")
    section = ctx.config.rollout
    return run_canary(
        ctx.server, ctx.name, int(registered["version"]), token=ctx.admin_token,
        canary=section.canary, timeout_s=section.timeout_s, poll_s=section.poll_s,
        actor=f"pipeline:{ctx.state.run_id[:12]}",
        progress=lambda message: ctx.progress("rollout", message),
    )  # fmt: skip


STEP_FUNCTIONS: dict[str, Callable[[RunContext], dict[str, Any]]] = {
    "train": step_train,
    "evaluate": step_evaluate,
    "gate": step_gate,
    "register": step_register,
    "rollout": step_rollout,
}
