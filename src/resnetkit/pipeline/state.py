"""The step-state file and ``pipeline.json``: what a run did, so a killed run resumes.

``pipeline-state.json`` in the output folder records the run's id and inputs and, per step,
its status and declared outputs; it is rewritten atomically after every step. A rerun with
the same inputs skips the steps marked done and resumes at the first that is not; a rerun of
a finished run does nothing. Other inputs in the same folder are refused.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write
from resnetkit.registry.migrations import utc_now

__all__ = ["PIPELINE_JSON", "STATE_FILE", "STEPS", "PipelineResult", "StepState"]

STATE_FILE = "pipeline-state.json"
PIPELINE_JSON = "pipeline.json"
#: The steps, in order.
STEPS = ("train", "evaluate", "gate", "register", "rollout")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@dataclasses.dataclass
class StepState:
    """The state file of one run: its inputs and, per step, status and outputs."""

    path: Path
    run_id: str
    inputs: dict[str, Any]
    steps: dict[str, dict[str, Any]]

    @classmethod
    def open(cls, out_dir: Path, inputs: dict[str, Any]) -> StepState:
        """The state of the run in ``out_dir``, or a new one (written at once).

        A run that failed before finishing any step is started afresh with the new inputs
        (the corrected call after a bad recipe, say): there is nothing of it to resume.

        Raises:
            ConfigError: the folder holds a run with other inputs that finished a step.
        """
        path = out_dir / STATE_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                state = cls(path, str(data["run_id"]), dict(data["inputs"]), dict(data["steps"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path} is not a pipeline state file; use a new --out") from exc
            if state.inputs != inputs and not any(state.done(step) for step in STEPS):
                state = cls(path, uuid.uuid4().hex, inputs, {})  # nothing done to resume
                state.save()
            elif state.inputs != inputs:
                changed = sorted(k for k in inputs.keys() | state.inputs.keys()
                                 if inputs.get(k) != state.inputs.get(k))  # fmt: skip
                raise ConfigError(
                    f"{out_dir} holds a pipeline run with other inputs ({', '.join(changed)}); "
                    "give a new --out, or the same inputs to resume it"
                )
            return state
        state = cls(path, uuid.uuid4().hex, inputs, {})
        state.save()
        return state

    def save(self) -> None:
        """Rewrite the file atomically."""
        write_json(self.path, {"run_id": self.run_id, "inputs": self.inputs, "steps": self.steps})

    def done(self, step: str) -> bool:
        """Whether ``step`` finished."""
        return self.steps.get(step, {}).get("status") == "done"

    def outputs(self, step: str) -> dict[str, Any]:
        """What a finished step declared as its outputs."""
        return dict(self.steps.get(step, {}).get("outputs", {}))

    def start(self, step: str) -> None:
        """Mark ``step`` as running (a kill now resumes here)."""
        entry = self.steps.setdefault(step, {})
        entry.update(status="running", started_at=utc_now())
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        self.save()

    def finish(self, step: str, outputs: dict[str, Any]) -> None:
        """Mark ``step`` done with its outputs."""
        self.steps[step].update(status="done", finished_at=utc_now(), outputs=outputs)
        self.save()

    @property
    def finished(self) -> bool:
        """Whether every step is done."""
        return all(self.done(step) for step in STEPS)


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """What a pipeline run decided and did; ``pipeline.json`` holds :meth:`to_dict`.

    Attributes:
        blessed: whether the gate passed every check.
        candidate: the registered version (``name:V``); None if the run never registered.
        baseline: the production version it was compared with; None for "no baseline".
        checks: the gate's checks, each ``{"name", "value", "threshold", "passed", ...}``.
        rollout: the canary's outcome on ``--server`` (``{"state": "promoted" | "rolled_back"
            | "aborted" | "timeout" | "skipped" | "not_started", ...}``).
        run_id: the run's id (recorded with the blessing).
        out_dir: where its files are.
        lineage: data fingerprints, the config and the baseline, as recorded in the registry.
        steps: per step, its status and outputs.
    """

    blessed: bool
    candidate: str | None
    baseline: str | None
    checks: list[dict[str, Any]]
    rollout: dict[str, Any]
    run_id: str
    out_dir: str
    lineage: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """One word: ``not_blessed``, ``promoted``, ``rolled_back``, ``aborted``, ``timeout``
        or ``blessed`` (registered, no rollout asked)."""
        if not self.blessed:
            return "not_blessed"
        state = str(self.rollout.get("state", "skipped"))
        return "blessed" if state in ("skipped", "not_started") else state

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``pipeline.json``."""
        return {**dataclasses.asdict(self), "outcome": self.outcome}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineResult:
        """Read back :meth:`to_dict`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})
