"""One way to load a model: any reference becomes one :class:`LoadedModel`.

A reference is a run or model directory, an ``.onnx`` file, or a registry reference
(``name@alias``, ``name:3``, ``name`` for the latest). A path that exists wins over a registry
name, so ``./good`` and ``good`` both load the folder ``good`` when it is there::

    loaded = load_model_ref("fashion@production")
    loaded.identity.label        # "fashion:3"
    loaded.spec                  # PreprocessingSpec(size=(28, 28), channels=1, ...)
    loaded.labels                # ["T-shirt/top", ...]
    backend = loaded.backend("auto", threads=2)   # ONNX Runtime; exported once, cached
    model = loaded.module()      # the torch weights (Grad-CAM, pruning, distillation)

Registry versions are checked out (sha256-verified) into a cache folder named by the
digest of their weights, never a temporary folder, so a long-running process keeps its files;
the ONNX exports and int8 files the backends need are cached beside them by the same digest,
so a restart does not export again. The cache is ``$RESNETKIT_CACHE`` or
``~/.cache/resnetkit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetkit.config import DataConfig, TrainConfig, from_dict, load_toml
from resnetkit.contract import (
    CONFIG_TOML,
    DRIFT_REFERENCE,
    MODEL_JSON,
    MODEL_WEIGHTS,
    ONNX_FILE,
    ModelCard,
    PreprocessingSpec,
    read_summary,
)
from resnetkit.errors import CheckpointError, ConfigError, MissingDependency, ResNetKitError
from resnetkit.export.runtime import InferenceBackend, OnnxBackend
from resnetkit.onnxio import (
    DEFAULT_OPSET,
    EMBEDDING_NAME,
    OUTPUT_NAME,
    card_metadata,
    check_onnx_file,
    read_metadata,
)
from resnetkit.registry import PathRef, RegistryRef, parse_ref
from resnetkit.registry.artifacts import sha256_file
from resnetkit.registry.sources import read_source

if TYPE_CHECKING:  # torch and the model code are imported where used: ONNX serving needs neither
    import torch
    from torch import nn

    from resnetkit.data import ImageDataset
    from resnetkit.export.torch_backend import TorchBackend

__all__ = [
    "BACKEND_KINDS",
    "CACHE_ENV",
    "LoadedModel",
    "ModelIdentity",
    "cache_root",
    "check_loadable",
    "load_model_ref",
]

CACHE_ENV = "RESNETKIT_CACHE"
#: Backends by kind. ``auto``: ONNX Runtime, exporting a weights version once (cached).
BACKEND_KINDS = ("auto", "torch", "torch-folded-cl", "torch-bf16", "onnx", "onnx-int8")


def cache_root() -> Path:
    """Where checkouts and cached exports live: ``$RESNETKIT_CACHE`` or ``~/.cache/resnetkit``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnetkit"


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Which model this is: a registry version, or a file or folder outside the registry.

    Attributes:
        name: the registered name, or the folder's (file's) name for a path.
        version: the registry version; None for a path.
        sha256: digest of the weights (``model.safetensors``, or the ``.onnx`` file).
        source: the folder (or ``.onnx`` file) the model's files are read from.
        ref: the reference as the user gave it.
    """

    name: str
    version: int | None
    sha256: str
    source: Path
    ref: str

    @property
    def label(self) -> str:
        """``name:3`` for a registry version, else the path: how errors name the model."""
        return f"{self.name}:{self.version}" if self.version is not None else str(self.source)

    @property
    def version_label(self) -> str:
        """The version as metrics and responses show it: ``3``, or ``sha-<12 hex>``."""
        return str(self.version) if self.version is not None else f"sha-{self.sha256[:12]}"


class LoadedModel:
    """A model resolved from a reference: identity, card, files, and ways to run it."""

    def __init__(
        self, identity: ModelIdentity, card: ModelCard, folder: Path, onnx_file: Path | None,
        metrics: dict[str, Any],
    ) -> None:  # fmt: skip
        self.identity = identity
        self.card = card
        self.folder = folder
        self.onnx_file = onnx_file
        self.metrics = metrics
        #: Seconds this object spent making a cached file (an ONNX export, an int8
        #: quantization) that later loads of the same weights will find ready.
        self.one_time_seconds = 0.0

    @property
    def spec(self) -> PreprocessingSpec:
        """The preprocessing spec (a clear error when the card has none)."""
        return self.card.spec(self.identity.label)

    @property
    def labels(self) -> list[str]:
        """Class names in output order."""
        return list(self.card.labels)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """One sample's shape ``(C, H, W)``."""
        return self.spec.input_size

    @property
    def has_weights(self) -> bool:
        """Whether the model is torch weights (not an ``.onnx`` file or version)."""
        return self.onnx_file is None and (self.folder / MODEL_WEIGHTS).is_file()

    @property
    def is_int8(self) -> bool:
        """Whether the model is an int8 ONNX file."""
        return self.onnx_file is not None and "quantization" in read_metadata(self.onnx_file)

    @property
    def drift_reference(self) -> Path | None:
        """The drift reference file, when the run or version has one."""
        path = self.folder / DRIFT_REFERENCE
        return path if path.is_file() else None

    def module(self, device: str | torch.device | None = None) -> nn.Module:
        """A fresh torch module with the weights loaded, in eval mode.

        Raises:
            CheckpointError: an ONNX-only model, or weights that do not fit the card.
        """
        if not self.has_weights:
            raise CheckpointError(
                f"{self.identity.label} is an ONNX model without torch weights; use the run "
                "directory or the weights version it was exported from"
            )
        from resnetkit.models import load_weights, model_from_card

        model = model_from_card(self.card)
        load_weights(model, self.folder / MODEL_WEIGHTS, label=self.identity.label)
        if device is not None:
            model.to(device)
        return model.eval()

    def onnx_path(self, *, opset: int = DEFAULT_OPSET) -> Path:
        """An fp32 ONNX file of this model: its own, or an export cached by weights digest."""
        if self.onnx_file is not None:
            return self.onnx_file
        target = cache_root() / "onnx" / f"{self.identity.sha256}-opset{opset}.onnx"
        if not target.is_file():
            try:
                from resnetkit.export.onnx import export_onnx
            except ModuleNotFoundError as exc:
                raise MissingDependency(
                    f"{self.identity.label} holds torch weights only: serving it on ONNX "
                    "Runtime means exporting it once, which needs PyTorch (pip install "
                    "'resnetkit[train]'); or register its ONNX file with the version "
                    "(resnetkit export, then registry register --artifact)"
                ) from exc

            start = time.perf_counter()
            model = self.module()
            export_onnx(
                model, target, input_size=self.input_size, opset=opset,
                metadata=card_metadata(self.card),
            )  # fmt: skip
            self.one_time_seconds += time.perf_counter() - start
        return target

    def backend(
        self,
        kind: str = "auto",
        *,
        threads: int | None = None,
        device: str = "cpu",
        spinning: bool = True,
    ) -> InferenceBackend:
        """A backend of ``kind`` (see :data:`BACKEND_KINDS`) running this model.

        ``auto`` and ``onnx`` run the model's ONNX file as it is (fp32 or int8) in ONNX
        Runtime, a weights version exported once and cached; ``onnx-int8`` runs an int8 file,
        quantizing a float model once (cached); the torch kinds need weights. ``threads``
        applies to ONNX Runtime; torch uses the process's pool.

        Raises:
            ConfigError: an unknown kind, or one this model cannot run as.
        """
        if kind not in BACKEND_KINDS:
            raise ConfigError(f"backend {kind!r} is not known; use {', '.join(BACKEND_KINDS)}")
        if kind.startswith("torch"):
            return self._torch_backend(kind, device)
        if kind == "onnx-int8" or self.is_int8:
            path, name = self.int8_path(), "onnx-int8"
        else:
            path, name = self.onnx_path(), "onnx-fp32"
        return OnnxBackend(path, name=name, device=device, threads=threads, spinning=spinning)

    def calibration_images(
        self, count: int, *, seed: int = 0, data: str | None = None
    ) -> torch.Tensor:
        """``count`` random training images (seeded), normalised: int8 calibration data."""
        if count < 1:
            raise ConfigError(f"calibration needs at least 1 image, got {count}")
        import torch

        train = self.dataset("train", data=data)
        gen = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(train), generator=gen)[: min(count, len(train))]
        return self.normalized(train.images[index])

    def int8_path(self, *, calibration: int = 64, seed: int = 0) -> Path:
        """An int8 ONNX file: this model's own, or one quantized once and cached (calibrated
        on ``calibration`` of its training images; ``resnetkit quantize`` checks accuracy)."""
        if self.is_int8:
            assert self.onnx_file is not None
            return self.onnx_file
        name = f"{self.identity.sha256}-calib{calibration}-seed{seed}.onnx"
        target = cache_root() / "int8" / name
        if not target.is_file():
            from resnetkit.compress import quantize_onnx

            fp32 = self.onnx_path()
            start = time.perf_counter()
            images = self.calibration_images(calibration, seed=seed)
            quantize_onnx(fp32, target, images)
            self.one_time_seconds += time.perf_counter() - start
        return target

    def _torch_backend(self, kind: str, device: str) -> TorchBackend:
        import torch

        from resnetkit.compress import fold_batchnorm
        from resnetkit.export.torch_backend import TorchBackend

        model = self.module(device)
        if kind == "torch":
            return TorchBackend(model, name="torch-eager", device=device)
        folded = fold_batchnorm(model, channels_last=True)
        dtype = torch.bfloat16 if kind == "torch-bf16" else None
        return TorchBackend(
            folded, name=kind, device=device, channels_last=True, autocast_dtype=dtype
        )

    def data_config(self) -> DataConfig | None:
        """The data the model was trained on, from its ``config.toml`` (None if unknown)."""
        path = self.folder / CONFIG_TOML
        if not path.is_file():
            name = read_summary(self.folder).get("dataset", {}).get("name")
            return DataConfig(name=name) if isinstance(name, str) else None
        try:
            return from_dict(TrainConfig, load_toml(path)).data
        except ResNetKitError:
            return None

    def dataset(
        self, split: str, *, data: str | None = None, limit: int | None = None
    ) -> ImageDataset:
        """A split of ``data``, or of the data the model was trained on, at its input size.

        Raises:
            ConfigError: no ``data`` given and the training data are unknown.
            DataError: the data are missing or corrupt.
        """
        from resnetkit.data import has_fixed_shape, load_dataset

        spec = self.spec
        if data is not None:
            name, data_dir = data, None
        else:
            cfg = self.data_config()
            if cfg is None:
                raise ConfigError(
                    f"{self.identity.label} does not say what data it was trained on; pass --data"
                )
            name, data_dir = cfg.name, cfg.data_dir
        if has_fixed_shape(name):  # its own size; check_dataset_fits compares it with ours
            return load_dataset(name, split, data_dir=data_dir, limit=limit)
        return load_dataset(
            name, split, data_dir=data_dir, limit=limit, image_size=spec.size,
            channels=spec.channels,
        )  # fmt: skip

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-logits embeddings ``(N, D)`` and softmax outputs ``(N, K)`` of ``uint8`` images,
        in float32: what drift detection compares. Torch weights when the model has them,
        else the ONNX graph's ``embedding`` output.

        Raises:
            CheckpointError: an ONNX model exported without an embedding output.
        """
        import torch

        from resnetkit.data import normalize
        from resnetkit.evaluate import map_batches, predict_embeddings

        if self.has_weights:
            return predict_embeddings(self.module(), images, self.spec)
        backend = self.backend("onnx")
        if EMBEDDING_NAME not in backend.outputs:
            raise CheckpointError(
                f"{self.identity.label} has no embedding output (exported before resnetkit "
                "exported one); re-export it, or use its run directory"
            )

        def both(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = backend.run(normalize(batch, self.spec))
            logits = torch.from_numpy(out[OUTPUT_NAME])
            return torch.from_numpy(out[EMBEDDING_NAME]), logits.softmax(dim=1)

        embeddings, probabilities = map_batches(
            both, images, device=torch.device("cpu"), batch_size=256
        )
        return embeddings, probabilities

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images normalised with this model's spec."""
        from resnetkit.data import normalize

        return normalize(images, self.spec)


def _path_model(path: Path, ref: str) -> LoadedModel:
    source = read_source(path)
    card = ModelCard.from_dict(source.model_json, source=str(path))
    if source.kind == "onnx":
        weights, folder, onnx_file = path, path.parent, path
    else:
        weights, folder, onnx_file = path / MODEL_WEIGHTS, path, None
    name = path.stem if onnx_file else path.resolve().name
    identity = ModelIdentity(name, None, sha256_file(weights), path, ref)
    return LoadedModel(identity, card, folder, onnx_file, read_summary(folder))


def _checkout(store: Any, info: Any) -> Path:
    """The version's files in the cache, checked out once (atomically) per set of artifacts.

    The key covers every file, not only the weights: the same weights registered again with
    another ``model.json`` or drift reference must not be served the first version's files.
    """
    files = sorted(f"{a.filename}:{a.digest}" for a in info.artifacts)
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    target = cache_root() / "checkouts" / digest
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        store.checkout(info.ref, scratch)
        with contextlib.suppress(FileExistsError, OSError):
            os.rename(scratch, target)  # another process may have won the race: same bytes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _registry_model(ref: RegistryRef, text: str, registry: str | None) -> LoadedModel:
    from resnetkit.registry import open_registry

    with open_registry(registry, create=False) as store:
        info = store.resolve(ref)
        folder = _checkout(store, info)
    onnx_file = folder / ONNX_FILE if (folder / ONNX_FILE).is_file() else None
    card = ModelCard.from_dict(info.model_json, source=info.ref)
    digest = next(a.digest for a in info.artifacts if a.filename in (MODEL_WEIGHTS, ONNX_FILE))
    identity = ModelIdentity(info.name, info.version, digest, folder, text)
    return LoadedModel(identity, card, folder, onnx_file, dict(info.metrics))


def load_model_ref(ref: str | os.PathLike[str], *, registry: str | None = None) -> LoadedModel:
    """Resolve any model reference into a :class:`LoadedModel`.

    Args:
        ref: a run or model directory, an ``.onnx`` file, ``name@alias``, ``name:V`` or
            ``name``; an existing path wins over a registry name.
        registry: the registry URL for registry references (default: ``$RESNETKIT_REGISTRY``
            or ``./resnetkit.db``).

    Raises:
        ConfigError: a malformed reference, or a path that does not exist.
        RegistryError: a registry reference that resolves to nothing.
        CheckpointError: a model whose files are malformed.
    """
    text = os.fspath(ref)
    _check_path_text(text)
    parsed = parse_ref(text)
    if isinstance(parsed, RegistryRef) and Path(text).exists():
        parsed = PathRef(Path(text))
    if isinstance(parsed, PathRef):
        if parsed.path.is_file() and parsed.path.name in (MODEL_JSON, MODEL_WEIGHTS):
            parsed = PathRef(parsed.path.parent)  # a model file names its folder
        if not parsed.path.exists():
            raise ConfigError(
                f"{parsed.path} does not exist; give a run directory, an .onnx file or a "
                "registry reference (name@alias, name:3)"
            )
        return _path_model(parsed.path, text)
    return _registry_model(parsed, text, registry)


def _check_path_text(text: str) -> None:
    """Refuse a reference no file system could hold (too long, a NUL) with a clear error
    instead of the OSError a later ``exists()`` would raise."""
    try:
        os.stat(text)
    except (FileNotFoundError, NotADirectoryError):
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"{text[:60]!r}{'...' if len(text) > 60 else ''} is neither a registry reference "
            f"(name@alias, name:3) nor a usable path ({reason})"
        ) from exc


def check_loadable(path: Path) -> None:
    """Check that a run directory or ``.onnx`` file loads: the registry's deep check.

    Builds the model the card names and loads the weights strictly, or opens the ONNX
    graph, so that a version that cannot be served is never registered.

    Raises:
        CheckpointError: naming what does not fit.
    """
    loaded = _path_model(path, str(path))
    if loaded.onnx_file is not None:
        check_onnx_file(loaded.onnx_file)
        OnnxBackend(loaded.onnx_file, threads=1)
        return
    loaded.module()
