"""``resnetkit pipeline compile --target kfp``: the same steps for Kubeflow Pipelines v2.

Compiled with the real KFP v2 compiler (``pip install 'resnetkit[kfp]'``). Each step is a
container running ``resnetkit pipeline run ... --until STEP`` in the image named by the
``image`` pipeline parameter. The run's folder travels between the steps as a KFP artifact
(passed by URI; KFP's launcher mounts it at a local path): each step copies the previous
step's folder into its own output artifact and runs its step there, so the step-state file
tells it where the run stands. The local runner (``resnetkit pipeline run``) stays the
default; KFP only schedules the same library calls at scale.

Parameters: ``image``, ``name`` (the registered model), ``pipeline_toml`` (the pipeline
file's text; empty for the defaults), ``candidate`` (empty: train), ``server`` (empty: no
rollout), ``registry`` (the registry URL the steps share, e.g. PostgreSQL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from resnetkit.errors import MissingDependency
from resnetkit.fileio import check_output_file
from resnetkit.pipeline.state import STEPS

__all__ = ["DEFAULT_IMAGE", "compile_kfp"]

DEFAULT_IMAGE = "ghcr.io/resnetkit/resnetkit:latest"
PIPELINE_NAME = "resnetkit-promotion"

# $0 previous folder (empty for the first step), $1 this step's folder, $2 step, $3 name,
# $4 pipeline file text, $5 candidate, $6 server, $7 registry URL.
_SCRIPT = r"""set -eu
mkdir -p "$1"
if [ -n "$0" ]; then cp -a "$0"/. "$1"/; fi
if [ -n "$4" ]; then printf '%s' "$4" > "$1/pipeline.toml"; fi
step=$2 name=$3 candidate=$5 server=$6 registry=$7 out=$1
export RESNETKIT_REGISTRY="$registry"
exec resnetkit pipeline run ${4:+"$out/pipeline.toml"} --name "$name" --out "$out" \
  --until "$step" ${candidate:+--candidate "$candidate"} ${server:+--server "$server"}
"""


def _kfp() -> tuple[Any, Any]:
    try:
        from kfp import compiler, dsl
    except ModuleNotFoundError as exc:
        raise MissingDependency(
            "pipeline compile --target kfp needs the Kubeflow Pipelines SDK: "
            "pip install 'resnetkit[kfp]'"
        ) from exc
    return compiler, dsl


def _component(dsl: Any, step: str, first: bool) -> Any:
    """The container component of one step; every step after the first takes the folder."""
    if first:

        def func(
            name: str, pipeline_toml: str, candidate: str, server: str, registry: str,
            run: dsl.Output[dsl.Artifact],
        ) -> Any:  # fmt: skip
            return dsl.ContainerSpec(
                image=DEFAULT_IMAGE, command=["sh", "-c", _SCRIPT],
                args=["", run.path, step, name, pipeline_toml, candidate, server, registry],
            )  # fmt: skip

    else:

        def func(  # type: ignore[misc]
            previous: dsl.Input[dsl.Artifact], name: str, pipeline_toml: str, candidate: str,
            server: str, registry: str, run: dsl.Output[dsl.Artifact],
        ) -> Any:  # fmt: skip
            return dsl.ContainerSpec(
                image=DEFAULT_IMAGE, command=["sh", "-c", _SCRIPT],
                args=[previous.path, run.path, step, name, pipeline_toml, candidate, server,
                      registry],
            )  # fmt: skip

    # This module's annotations are strings (``from __future__ import annotations``); KFP
    # reads the parameter types from the objects, so give it those.
    types: dict[str, Any] = {"previous": dsl.Input[dsl.Artifact]} if not first else {}
    types |= {k: str for k in ("name", "pipeline_toml", "candidate", "server", "registry")}
    func.__annotations__ = {**types, "run": dsl.Output[dsl.Artifact]}
    func.__name__ = f"resnetkit_{step}"
    func.__doc__ = f"resnetkit pipeline run --until {step}"
    return dsl.container_component(func)


def build_pipeline(image: str = DEFAULT_IMAGE) -> Any:
    """The KFP pipeline function (steps chained by their run-folder artifacts)."""
    _, dsl = _kfp()
    components = {step: _component(dsl, step, i == 0) for i, step in enumerate(STEPS)}

    def promotion(
        name: str,
        image: str = image,
        pipeline_toml: str = "",
        candidate: str = "",
        server: str = "",
        registry: str = "",
    ) -> None:
        common = {"name": name, "pipeline_toml": pipeline_toml, "candidate": candidate,
                  "server": server, "registry": registry}  # fmt: skip
        previous = None
        for step in STEPS:
            if previous is None:
                task = components[step](**common)
            else:
                task = components[step](previous=previous.outputs["run"], **common)
            task.set_container_image(image)
            task.set_display_name(step)
            task.set_caching_options(False)  # a step reads the registry: never reuse a result
            previous = task

    params = ("name", "image", "pipeline_toml", "candidate", "server", "registry")
    promotion.__annotations__ = {**{k: str for k in params}, "return": None}
    description = "resnetkit: " + " -> ".join(STEPS)
    return dsl.pipeline(name=PIPELINE_NAME, description=description)(promotion)


def compile_kfp(output: str | os.PathLike[str], *, image: str | None = None) -> Path:
    """Compile the pipeline to a KFP v2 YAML file (atomically).

    Raises:
        MissingDependency: the ``kfp`` extra is not installed.
        ConfigError: the output path cannot be written.
    """
    compiler, _ = _kfp()
    target = check_output_file(output, what="-o")
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.stem}.yaml")
    try:
        compiler.Compiler().compile(build_pipeline(image or DEFAULT_IMAGE), str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
