"""Edge formats: ExecuTorch ``.pte``, LiteRT ``.tflite`` and Core ML ``.mlpackage``.

:func:`export_edge` converts a model with weights, checks the result on real test images
beside the torch model, and only then moves it into place: a file that fails its check is
never written, and the error carries the figures. The check, by precision:

* **fp32** (ExecuTorch, LiteRT): top-1 agreement with torch at least
  :data:`FP32_MIN_AGREEMENT` and max |delta logit| at most :data:`FP32_MAX_ABS_DIFF`.
* **int8** (ExecuTorch, LiteRT; PT2E, calibrated on the images ``resnetkit quantize``
  uses): top-1 accuracy at most ``budget_points`` below torch fp32 on the same images, the
  budget ``resnetkit quantize`` applies to ONNX int8 (1 point by default).
* **Core ML**: conversion and a structural check only (interface, program, metadata);
  predictions need macOS, so fp32 only and no parity here.

Every file carries the model card (arch, kwargs, labels, preprocessing) and the export's
facts as JSON in the format's own metadata (:func:`read_edge_metadata` reads any of them).
Each format's packages are imported when it is used; a missing one is a
:class:`~resnetkit.errors.MissingDependency` naming the extra that installs it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from resnetkit.errors import ConfigError, ExportError, MissingDependency
from resnetkit.fileio import check_output_file

if TYPE_CHECKING:
    import torch
    from torch import nn

    from resnetkit.export.loading import LoadedModel

__all__ = [
    "EDGE_FORMATS",
    "FP32_MAX_ABS_DIFF",
    "FP32_MIN_AGREEMENT",
    "MIN_PARITY_IMAGES",
    "EdgeExport",
    "EdgeFormat",
    "EdgeParity",
    "check_edge_artifact",
    "check_edge_output",
    "edge_format",
    "edge_runner",
    "export_edge",
    "pack_mlpackage",
    "read_edge_metadata",
]

FP32_MIN_AGREEMENT = 0.999
FP32_MAX_ABS_DIFF = 1e-3
MIN_PARITY_IMAGES = 1000
Stage = Callable[[str], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class EdgeFormat:
    """A format: its file suffix, the extra that installs it, what it imports to convert and
    to run, and whether its models can run on this kind of machine (Core ML: macOS only)."""

    name: str
    suffix: str
    extra: str
    convert_modules: tuple[str, ...]
    run_modules: tuple[str, ...]
    runs_here: bool
    int8: bool


EDGE_FORMATS = {
    "executorch": EdgeFormat("executorch", ".pte", "executorch", ("executorch.exir",),
                             ("executorch.runtime",), runs_here=True, int8=True),
    "tflite": EdgeFormat("tflite", ".tflite", "tflite", ("litert_torch",),
                         ("ai_edge_litert.interpreter",), runs_here=True, int8=True),
    "coreml": EdgeFormat("coreml", ".mlpackage", "coreml", ("coremltools",), (),
                         runs_here=False, int8=False),
}  # fmt: skip


# litert-torch's converter packages pin typing-extensions below what pydantic needs, so they
# are installed without their dependencies, beside the extra (docs/edge.md, "Installing").
_NO_DEPS_MODULES = {"litert_torch", "ai_edge_quantizer", "litert_lm_builder", "xdsl"}
_CONVERTER_NO_DEPS = (
    ", then pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0 xdsl==0.28.0 "
    "ai-edge-quantizer==0.10.0 litert-lm-builder==0.18.1"
)


def edge_format(name: str) -> EdgeFormat:
    """The format named ``name``.

    Raises:
        ConfigError: an unknown format, listing the known ones.
    """
    if name not in EDGE_FORMATS:
        known = ", ".join(("onnx", *EDGE_FORMATS))
        raise ConfigError(f"--format {name!r} is not known; use one of {known}")
    return EDGE_FORMATS[name]


def require(fmt: EdgeFormat, *, convert: bool) -> None:
    """Import what ``fmt`` needs to convert (or only to run), before any work starts.

    Raises:
        MissingDependency: one line naming the package and the extra that installs it.
    """
    from resnetkit.export.edge_capture import quiet_converters

    for module in fmt.convert_modules + fmt.run_modules if convert else fmt.run_modules:
        try:
            with quiet_converters():  # their import-time warnings are not the user's business
                importlib.import_module(module)
        except ImportError as exc:
            missing = exc.name or module
            then = _CONVERTER_NO_DEPS if missing.partition(".")[0] in _NO_DEPS_MODULES else ""
            raise MissingDependency(
                f"--format {fmt.name} needs {missing}, which this install lacks: "
                f"pip install 'resnetkit[{fmt.extra}]'{then}"
            ) from exc


def check_edge_output(path: str | os.PathLike[str], fmt: EdgeFormat) -> Path:
    """Check ``-o`` before any work: the format's suffix, an existing, writable folder.

    Raises:
        ConfigError: naming the path and what is wrong with it.
    """
    target = Path(path)
    if target.suffix.lower() != fmt.suffix:
        raise ConfigError(f"-o {target}: a {fmt.name} file should end in {fmt.suffix}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"-o {target}: the folder {parent} does not exist; create it first")
    if fmt.suffix == ".mlpackage":  # a package is a folder: check the place, not the name
        check_output_file(parent / f".{target.name}.probe", what="-o")
        if target.exists() and not (target / "Manifest.json").is_file():
            raise ConfigError(f"-o {target} exists and is not a Core ML package; not replacing it")
        return target
    return check_output_file(target, what="-o", suffix=fmt.suffix)


@dataclass(frozen=True)
class EdgeParity:
    """An edge model against torch fp32 on the same real test images.

    ``max_abs_diff`` and ``top1_agreement`` compare logits and predictions; ``torch_top1``
    and ``edge_top1`` are accuracies on the labels (the int8 budget's figures).
    """

    precision: str
    images: int
    max_abs_diff: float
    top1_agreement: float
    torch_top1: float
    edge_top1: float
    budget_points: float
    max_abs_diff_allowed: float
    min_agreement: float
    passed: bool

    @property
    def drop_points(self) -> float:
        """Accuracy lost against torch fp32, in percentage points."""
        return (self.torch_top1 - self.edge_top1) * 100

    def summary(self) -> str:
        """One line for logs, errors and the CLI."""
        figures = (
            f"on {self.images} test images: top-1 agreement {self.top1_agreement:.2%}, max "
            f"|delta logit| {self.max_abs_diff:.2e}, top-1 torch {self.torch_top1:.2%} -> "
            f"{self.edge_top1:.2%} (drop {self.drop_points:+.2f} points)"
        )
        if self.precision == "fp32":
            need = (f"need agreement >= {self.min_agreement:.1%}, |delta| <= "
                    f"{self.max_abs_diff_allowed:g}")  # fmt: skip
        else:
            need = f"int8 budget {self.budget_points:g} points"
        return f"{figures}; {need}"


@dataclass(frozen=True)
class EdgeExport:
    """What :func:`export_edge` wrote and measured."""

    path: str
    format: str
    precision: str
    size_bytes: int
    parity: EdgeParity | None
    structure: dict[str, Any] | None
    details: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the CLI's ``--json``)."""
        data = asdict(self)
        if self.parity is not None:
            data["parity"] = {**asdict(self.parity), "drop_points": self.parity.drop_points,
                              "summary": self.parity.summary()}  # fmt: skip
        return data


class EdgeRunner(Protocol):
    """Runs an edge model here: logits ``(N, K)`` of normalised images ``(N, C, H, W)``."""

    def run(self, images: np.ndarray) -> np.ndarray: ...


def edge_runner(path: str | os.PathLike[str], *, threads: int | None = None) -> EdgeRunner:
    """A runner for a ``.pte`` or ``.tflite`` file, by its suffix.

    Raises:
        ConfigError: a Core ML package (macOS only) or an unknown suffix.
        MissingDependency: the format's runtime is not installed.
    """
    suffix = Path(path).suffix.lower()
    fmt = next((f for f in EDGE_FORMATS.values() if f.suffix == suffix), None)
    if fmt is None or not fmt.runs_here:
        raise ConfigError(f"{path}: only .pte and .tflite models run here (Core ML needs macOS)")
    require(fmt, convert=False)
    if fmt.name == "executorch":
        from resnetkit.export.edge_executorch import PteRunner

        return PteRunner(path, threads=threads)
    from resnetkit.export.edge_litert import TfliteRunner

    return TfliteRunner(path, threads=threads)


def read_edge_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The resnetkit metadata (model card and export facts) of any edge file, by suffix.

    Raises:
        ConfigError: not an edge format's suffix.
        CheckpointError: unreadable, or exported without resnetkit metadata.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".pte":
        from resnetkit.export.edge_executorch import read_pte_metadata

        return read_pte_metadata(path)
    if suffix == ".tflite":
        from resnetkit.export.edge_litert import read_tflite_metadata

        return read_tflite_metadata(path)
    if suffix == ".mlpackage":
        from resnetkit.export.edge_coreml import read_coreml_metadata

        return read_coreml_metadata(path)
    raise ConfigError(f"{path}: not an edge model (.pte, .tflite or .mlpackage)")


def check_edge_artifact(path: str | os.PathLike[str], weights_sha256: str) -> str:
    """Check that an edge file was exported from the weights with digest ``weights_sha256``;
    returns the artifact name a registry version stores it under (``model-int8.pte``, ...).

    Raises:
        ConfigError: not an edge model, or exported from other weights.
        CheckpointError: unreadable, or without resnetkit metadata.
    """
    metadata = read_edge_metadata(path)
    source = metadata.get("source_sha256")
    if source != weights_sha256:
        raise ConfigError(
            f"{path} was exported from other weights (sha256 {str(source)[:12]}...), not these "
            f"({weights_sha256[:12]}...); export it again from this run"
        )
    fmt = edge_format(str(metadata.get("format")))
    precision = "-int8" if metadata.get("precision") == "int8" else ""
    return f"model{precision}{fmt.suffix}"


def pack_mlpackage(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Zip a ``.mlpackage`` folder into the file ``dest`` (sorted entries, fixed times: the
    same package gives the same bytes, so the registry's digest names it)."""
    import zipfile

    folder = Path(path)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{folder.name}/{file.relative_to(folder).as_posix()}",
                                   date_time=(1980, 1, 1, 0, 0, 0))  # fmt: skip
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())
    return Path(dest)


def parity_check(
    runner: EdgeRunner,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    precision: str,
    budget_points: float,
    max_abs_diff: float = FP32_MAX_ABS_DIFF,
    min_agreement: float = FP32_MIN_AGREEMENT,
) -> EdgeParity:
    """Run the edge model and torch fp32 on the same normalised images and compare."""
    import torch

    model.eval()
    with torch.inference_mode():
        expected = torch.cat([model(b) for b in images.float().split(256)]).float().numpy()
    got = runner.run(images.float().numpy())
    truth = labels.numpy()
    torch_top1 = float((expected.argmax(1) == truth).mean())
    edge_top1 = float((got.argmax(1) == truth).mean())
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    abs_diff = float(np.abs(got - expected).max())
    if precision == "fp32":
        passed = agreement >= min_agreement and abs_diff <= max_abs_diff
    else:
        passed = (torch_top1 - edge_top1) * 100 <= budget_points
    return EdgeParity(precision, int(images.shape[0]), abs_diff, agreement, torch_top1,
                      edge_top1, budget_points, max_abs_diff, min_agreement, passed)  # fmt: skip


@contextlib.contextmanager
def _no_stage(message: str) -> Iterator[None]:
    yield


def _stage_path(target: Path) -> Path:
    # Hidden, beside the target (same file system: the rename is atomic), same suffix.
    return target.with_name(f".{target.stem}.{os.getpid()}.staged{target.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _move_into_place(stage: Path, target: Path) -> None:
    """``os.replace`` for files; a package folder swaps with the old one, then it goes."""
    if not stage.is_dir() or not target.exists():
        os.replace(stage, target)
        return
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    os.replace(target, old)
    os.replace(stage, target)
    shutil.rmtree(old, ignore_errors=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def export_edge(
    loaded: LoadedModel,
    output: str | os.PathLike[str],
    *,
    fmt: str,
    int8: bool = False,
    parity_images: int = MIN_PARITY_IMAGES,
    calibration_images: int = 512,
    seed: int = 0,
    budget_points: float = 1.0,
    data: str | None = None,
    delegate: bool = True,
    threads: int | None = 1,
    max_abs_diff: float = FP32_MAX_ABS_DIFF,
    min_agreement: float = FP32_MIN_AGREEMENT,
    stage: Stage = _no_stage,
) -> EdgeExport:
    """Convert a model with weights to ``fmt``, check it, and only then write ``output``.

    Args:
        loaded: the model (a run directory or registry version with torch weights).
        output: the file (``.pte``, ``.tflite``) or package (``.mlpackage``) to write.
        fmt: ``executorch``, ``tflite`` or ``coreml``.
        int8: PT2E static int8 (ExecuTorch, LiteRT).
        parity_images: real test images to check on (at least :data:`MIN_PARITY_IMAGES`).
        calibration_images, seed: the int8 calibration set, as ``resnetkit quantize`` picks
            it (that many training images, shuffled by ``seed``).
        budget_points: the int8 accuracy budget against torch fp32, in points.
        data: the dataset for real images (default: the model's own).
        delegate: ExecuTorch: delegate to XNNPACK (else portable kernels only).
        threads: the runtime's threads while checking.
        max_abs_diff, min_agreement: the fp32 tolerances (the issue's, by default).
        stage: a context manager factory shown around each step (the CLI's spinner).

    Raises:
        ConfigError: bad arguments or output path (before any work).
        MissingDependency: the format's extra is not installed.
        ExportError: conversion failed (op and layer named), or the check failed (figures).
    """
    spec = edge_format(fmt)
    target = check_edge_output(output, spec)
    _check_arguments(spec, int8, parity_images, calibration_images, budget_points)
    require(spec, convert=True)
    started = time.perf_counter()
    model = loaded.module()
    example = loaded.normalized(loaded.dataset("test", data=data, limit=1).images).float()
    calibration = None
    if int8:
        with stage(f"picking {calibration_images} calibration images"):
            calibration = loaded.calibration_images(calibration_images, seed=seed, data=data)
    precision = "int8" if int8 else "fp32"
    metadata = _metadata(loaded, spec, precision, calibration, seed, delegate)
    staged = _stage_path(target)
    _remove(staged)
    try:
        with stage(f"converting {loaded.identity.label} to {fmt} {precision}"):
            details = _convert(spec, model, example, staged, metadata, calibration, delegate)
        parity, structure = None, None
        if spec.runs_here:
            test = loaded.dataset("test", data=data, limit=parity_images)
            _check_enough(test.images.shape[0], parity_images)
            with stage(f"checking {fmt} {precision} against torch on {len(test)} test images"):
                runner = edge_runner(staged, threads=threads)
                parity = parity_check(
                    runner, model, loaded.normalized(test.images), test.labels,
                    precision=precision, budget_points=budget_points,
                    max_abs_diff=max_abs_diff, min_agreement=min_agreement,
                )  # fmt: skip
            if not parity.passed:
                raise ExportError(f"{fmt} {precision} parity check failed, {target} not "
                                  f"written: {parity.summary()}")  # fmt: skip
        else:
            from resnetkit.export.edge_coreml import check_mlpackage

            with stage("checking the package's structure"):
                found = check_mlpackage(staged, input_size=loaded.input_size,
                                        classes=len(loaded.labels))  # fmt: skip
            structure = {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(found).items()
            }
            structure["predictions"] = "not run: Core ML needs macOS"
        _move_into_place(staged, target)
    finally:
        _remove(staged)
    return EdgeExport(str(target), fmt, precision, _size(target), parity, structure, details,
                      time.perf_counter() - started)  # fmt: skip


def _check_arguments(
    spec: EdgeFormat, int8: bool, parity_images: int, calibration_images: int, budget: float
) -> None:
    if int8 and not spec.int8:
        raise ConfigError(
            f"--int8 is not offered for {spec.name}: its accuracy cannot be checked here "
            "(Core ML predictions need macOS); export fp32, or use executorch or tflite"
        )
    if parity_images < MIN_PARITY_IMAGES:
        raise ConfigError(f"--parity-images must be at least {MIN_PARITY_IMAGES}, got "
                          f"{parity_images}")  # fmt: skip
    if int8 and calibration_images < 1:
        raise ConfigError(f"--calib must be at least 1, got {calibration_images}")
    if budget < 0:
        raise ConfigError(f"--budget must be at least 0, got {budget:g}")


def _check_enough(found: int, wanted: int) -> None:
    if found < wanted:
        raise ConfigError(
            f"the test set has {found} images; the parity check needs {wanted} (at least "
            f"{MIN_PARITY_IMAGES}); pass --data with a larger test set"
        )


def _metadata(
    loaded: LoadedModel,
    spec: EdgeFormat,
    precision: str,
    calibration: torch.Tensor | None,
    seed: int,
    delegate: bool,
) -> dict[str, Any]:
    from resnetkit.onnxio import card_metadata

    facts: dict[str, Any] = {
        "format": spec.name,
        "precision": precision,
        "input_shape": [1, *loaded.input_size],
        "input": "float32, normalised with the preprocessing",
        "output": "logits",
        "source": loaded.identity.label,
        "source_sha256": loaded.identity.sha256,
    }
    if spec.name == "tflite" and calibration is not None:
        facts["input"] = "int8: the normalised image quantized with the input's scale and zero"
        facts["output"] = "logits, int8: dequantize with the output's scale and zero"
    if spec.name == "executorch":
        facts["delegate"] = "xnnpack+portable" if delegate else "portable"
    if calibration is not None:
        facts["quantization"] = {"method": "pt2e static, symmetric per-channel int8",
                                 "calibration_images": int(calibration.shape[0]),
                                 "seed": seed}  # fmt: skip
    return {**card_metadata(loaded.card), **facts}


def _convert(
    spec: EdgeFormat,
    model: nn.Module,
    example: torch.Tensor,
    staged: Path,
    metadata: dict[str, Any],
    calibration: torch.Tensor | None,
    delegate: bool,
) -> dict[str, Any]:
    if spec.name == "executorch":
        from resnetkit.export.edge_executorch import to_pte

        program = to_pte(model, example, metadata=metadata, calibration=calibration,
                         delegate=delegate)  # fmt: skip
        _write_bytes(staged, program.buffer)
        return {"delegated_subgraphs": program.delegated_subgraphs,
                "portable_ops": program.portable_ops}  # fmt: skip
    if spec.name == "tflite":
        from resnetkit.export.edge_litert import to_tflite

        _write_bytes(staged, to_tflite(model, example, metadata=metadata, calibration=calibration))
        return {}
    from resnetkit.export.edge_coreml import to_mlpackage

    to_mlpackage(model, example, staged, metadata=metadata)
    return {}
