"""The models a server holds: each version loaded once, warmed up, behind its own batcher.

A :class:`ModelPool` maps a served name (``fashion``) to its loaded versions (``3``, or
``sha-1a2b...`` for a file outside the registry). Loading runs in a worker thread (reading,
exporting to ONNX on first use, opening the session, warm-up batches), so the event loop keeps
answering health checks; a version is *ready* only once its warm-up has run. Every batcher
shares one compute slot, so a stable and a canary version never run forward passes at the same
time on the same cores.

A version whose folder holds an out-of-distribution detector (``ood_detector.npz``, or a drift
reference with logits to fit one on) gets one more output, :data:`OOD_SCORE`: each sample's
score (1.0 is the threshold), computed with NumPy from the embedding and logits of the same
forward pass, on the batcher's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from resnetkit.errors import (
    ConfigError,
    Conflict,
    MissingDependency,
    ModelNotServed,
    NotReady,
    ResNetKitError,
    ServeError,
)
from resnetkit.export import InferenceBackend, LoadedModel, cache_root, load_model_ref
from resnetkit.onnxio import EMBEDDING_NAME, OUTPUT_NAME
from resnetkit.serve.batcher import BatchStats, DynamicBatcher
from resnetkit.serve.livedrift import LiveDrift, LiveDriftSettings
from resnetkit.serve.metrics import ServerMetrics

if TYPE_CHECKING:
    from resnetkit.monitor.ood import OODDetector

__all__ = ["OOD_SCORE", "PROBABILITIES", "ModelPool", "PoolSettings", "ServedModel", "softmax"]

log = logging.getLogger("resnetkit.serve")

PROBABILITIES = "probabilities"
#: The output holding each sample's out-of-distribution score (1.0 is the threshold).
OOD_SCORE = "ood_score"
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """How each model is run: backend, threads, batching and warm-up."""

    backend: str = "auto"
    threads: int | None = None
    device: str = "cpu"
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    queue_size: int = 256
    max_queue_wait_ms: float | None = None
    warmup_batches: int = 3
    registry: str | None = None
    drift: LiveDriftSettings | None = dataclasses.field(default_factory=LiveDriftSettings)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.warmup_batches < 0:
            raise ConfigError(f"warm-up batches must be >= 0, got {self.warmup_batches}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits (non-finite logits give NaN,
    which the request path refuses as a model error)."""
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted, dtype=np.float32)
        out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out


class ServedModel:
    """One loaded version: its identity, backend, batcher and state."""

    def __init__(self, name: str, loaded: LoadedModel, backend: InferenceBackend) -> None:
        self.name = name
        self.loaded = loaded
        self.backend = backend
        self.version = loaded.identity.version_label
        self.batcher: DynamicBatcher | None = None
        self.drift: LiveDrift | None = None
        self.ood: OODDetector | None = None
        self.ood_note = "no OOD detector"  # where the detector came from, or why there is none
        self.ready = False
        self._explainer: Any = None
        self.fault: Any = None  # an injected fault (serve.router.Fault), for chaos tests
        self._explain_lock = threading.Lock()
        self.load_seconds = 0.0  # reading, building the backend, warm-up: all of it
        self.warmup_seconds = 0.0
        self.loaded_at = time.time()

    @property
    def labels(self) -> list[str]:
        """Class names in output order (``class_<i>`` where the card has none)."""
        if self.loaded.labels:
            return self.loaded.labels
        return [f"class_{i}" for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        """Outputs of the head."""
        n = self.loaded.card.num_classes
        return int(n) if n else len(self.loaded.labels)

    @property
    def outputs(self) -> tuple[str, ...]:
        """What a forward pass returns: logits, probabilities and, where known, embeddings."""
        extra = (EMBEDDING_NAME,) if EMBEDDING_NAME in self.backend.outputs else ()
        ood = (OOD_SCORE,) if self.ood is not None else ()
        return (OUTPUT_NAME, PROBABILITIES, *extra, *ood)

    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One forward pass (on the batcher's thread): logits, probabilities, embedding."""
        out = self.backend.run(batch)
        logits = out[OUTPUT_NAME].astype(np.float32, copy=False)
        result = {OUTPUT_NAME: logits, PROBABILITIES: softmax(logits)}
        if EMBEDDING_NAME in out:
            result[EMBEDDING_NAME] = out[EMBEDDING_NAME]
        if self.ood is not None:
            scores = self.ood.normalised(result.get(EMBEDDING_NAME), logits, self.ood.method)
            result[OOD_SCORE] = scores.astype(np.float32)
        return result

    def warm_up(self, batches: int, max_batch_size: int) -> None:
        """Forward passes before the version reports ready, so requests do not pay for lazy
        initialisation: batch 1 and full size alternately (``batches`` in all) for torch,
        whose kernels are chosen per shape; one pass at batch 1 for ONNX Runtime, which
        pays once, not per batch size (resnet18 int8: the first batch of 32 runs as fast
        as the tenth), so a cold start does not wait for a batch nobody asked for."""
        rng = np.random.default_rng(0)
        sizes = ([1, max_batch_size] * batches)[:batches]
        if not self.backend.name.startswith("torch"):
            sizes = sizes[:1]
        for size in sizes:
            x = rng.standard_normal((size, *self.loaded.input_size), dtype=np.float32)
            self.forward(x)

    def explain(self, x: np.ndarray, *, target: int | None, stage: str | None, method: str) -> Any:
        """Grad-CAM of one preprocessed image ``(C, H, W)`` on the version's torch weights.

        Runs on the calling (worker) thread; one explanation at a time per version, as the
        module keeps hooks while it runs.

        Raises:
            CheckpointError: an ONNX-only version (no torch weights to explain with).
            ConfigError: an unknown stage, class or method.
        """
        try:
            import torch

            from resnetkit.monitor.explain import explain
        except ModuleNotFoundError as exc:
            raise MissingDependency.for_module(exc.name, "Grad-CAM") from exc
        with self._explain_lock:
            if self._explainer is None:
                self._explainer = self.loaded.module()
            batch = torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32))
            return explain(self._explainer, batch, target_class=target, stage=stage, method=method)

    def describe(self) -> dict[str, Any]:
        """Plain data for the management API and the dashboard."""
        identity = self.loaded.identity
        return {
            "name": self.name,
            "version": self.version,
            "ref": identity.ref,
            "registry_version": identity.version,
            "sha256": identity.sha256,
            "backend": self.backend.name,
            "threads": self.backend.threads,
            "ready": self.ready,
            "load_seconds": round(self.load_seconds, 3),
            "input_size": list(self.loaded.input_size),
            "labels": self.labels,
            "metrics": {k: v for k, v in self.loaded.metrics.items() if not isinstance(v, dict)},
            "drift": None if self.drift is None else self.drift.describe(),
            "ood": self.describe_ood(),
            "explainable": self.loaded.has_weights,
        }

    def describe_ood(self) -> dict[str, Any]:
        """The OOD detector as model info shows it, or why the version has none."""
        if self.ood is None:
            return {"available": False, "reason": self.ood_note}
        return {"available": True, "from": self.ood_note, **self.ood.describe()}


def served_name(loaded: LoadedModel) -> str:
    """The name a model is served under: its registry name, or its folder's (file's) name."""
    return _NAME_RE.sub("-", loaded.identity.name).strip("-") or "model"


def attach_ood(served: ServedModel) -> None:
    """Give ``served`` its OOD detector when its folder has one (or a drift reference with
    logits to fit one on) and the backend gives what the detector's method reads."""
    from resnetkit.monitor.ood import detector_beside

    loaded = served.loaded
    try:
        detector, note = detector_beside(loaded.folder, loaded.drift_reference)
    except ResNetKitError as exc:  # a corrupt file: serve without the flag, and say why
        log.warning("%s: %s", served.name, exc)
        served.ood_note = f"no OOD detector: {exc}"
        return
    lacks_embedding = EMBEDDING_NAME not in served.backend.outputs
    if detector is not None and detector.needs_embedding and lacks_embedding:
        detector, note = None, "no OOD detector: the model has no embedding output"
    served.ood, served.ood_note = detector, note
    if detector is None:
        return
    try:  # one pass through the scoring: a detector of another model fails here, not later
        served.forward(np.zeros((1, *loaded.input_size), dtype=np.float32))
    except ResNetKitError as exc:
        log.warning("%s: OOD detector not used: %s", served.name, exc)
        served.ood, served.ood_note = None, f"no OOD detector: {exc}"


class ModelPool:
    """Every loaded version, by served name and version."""

    def __init__(self, settings: PoolSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, dict[str, ServedModel]] = {}
        self.loading: set[str] = set()
        # One forward pass at a time in the process: two pools would fight over the cores.
        self.compute_slot = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="inference"
        )
        self._lock = asyncio.Lock()

    # -- loading ------------------------------------------------------------------------

    def _load_sync(self, ref: str) -> ServedModel:
        start = time.perf_counter()
        loaded = load_model_ref(ref, registry=self.settings.registry)
        backend = loaded.backend(
            self.settings.backend,
            threads=self.settings.threads,
            device=self.settings.device,
            spinning=False,
        )
        served = ServedModel(served_name(loaded), loaded, backend)
        warm = time.perf_counter()
        served.warm_up(self.settings.warmup_batches, self.settings.max_batch_size)
        served.warmup_seconds = time.perf_counter() - warm
        self._attach_drift(served)
        attach_ood(served)
        served.load_seconds = time.perf_counter() - start
        return served

    async def load(self, ref: str, *, name: str | None = None) -> ServedModel:
        """Load, warm up and start serving the model ``ref`` (a registry reference or path).

        Raises:
            ConfigError, RegistryError, CheckpointError: the reference is wrong or unloadable.
            ServeError: that name and version are already served.
        """
        key = f"{name or ''}|{ref}"
        self.loading.add(key)
        try:
            served = await asyncio.to_thread(self._load_sync, ref)
            if name:
                served.name = name
            async with self._lock:
                if served.version in self.models.get(served.name, {}):
                    raise ServeError(f"{served.name} version {served.version} is already served")
                self._start(served)
                self.models.setdefault(served.name, {})[served.version] = served
        finally:
            self.loading.discard(key)
        once = served.loaded.one_time_seconds
        log.info(
            "loaded %s:%s (%s) in %.2f s%s", served.name, served.version, served.backend.name,
            served.load_seconds,
            f", {once:.2f} s of it making its ONNX Runtime file from the weights once (cached in "
            f"{cache_root()}; later loads skip it)" if once else "",
        )  # fmt: skip
        return served

    def _attach_drift(self, served: ServedModel) -> None:
        """Watch the version for drift when it has a reference and exports embeddings."""
        reference = served.loaded.drift_reference
        if self.settings.drift is None or reference is None:
            return
        if EMBEDDING_NAME not in served.outputs:
            log.warning("%s: no embedding output, so no live drift detection", served.name)
            return

        def publish(detector: str, statistic: float, p_value: float, detected: bool) -> None:
            self.metrics.set_drift(
                served.name, served.version, detector,
                statistic=statistic, p_value=p_value, detected=detected,
            )  # fmt: skip

        served.drift = LiveDrift.from_file(reference, self.settings.drift, publish)

    def _start(self, served: ServedModel) -> None:
        s = self.settings
        served.batcher = DynamicBatcher(
            served.forward,
            max_batch_size=s.max_batch_size,
            max_delay_ms=s.max_delay_ms,
            queue_size=s.queue_size,
            max_queue_wait_ms=s.max_queue_wait_ms,
            executor=self._executor,
            compute_slot=self.compute_slot,
            on_batch=self._on_batch(served),
            name=f"{served.name}:{served.version}",
        )
        served.batcher.start()
        served.ready = True
        baseline = served.loaded.metrics.get("test_accuracy")
        self.metrics.model_loaded(
            served.name,
            served.version,
            load_s=served.load_seconds,
            queue_capacity=s.queue_size,
            baseline_accuracy=float(baseline) if isinstance(baseline, (int, float)) else None,
        )

    def _on_batch(self, served: ServedModel) -> Callable[[BatchStats], None]:
        def record(stats: BatchStats) -> None:
            self.metrics.observe_batch(served.name, served.version, stats)
            if served.batcher is not None:
                depth, capacity = served.batcher.queue_depth, served.batcher.capacity
                self.metrics.set_queue(served.name, served.version, depth, capacity)

        return record

    async def unload(self, name: str, version: str | None = None) -> list[ServedModel]:
        """Stop serving ``name`` (one version, or all), finishing what is queued first.

        Raises:
            ModelNotServed: no such name or version.
        """
        async with self._lock:
            versions = self.models.get(name)
            if not versions or (version is not None and version not in versions):
                raise ModelNotServed(self._unknown(name, version))
            chosen = [versions.pop(version)] if version is not None else list(versions.values())
            if version is None or not versions:
                self.models.pop(name, None)
        for served in chosen:
            served.ready = False
            if served.batcher is not None:
                await served.batcher.stop(drain=True)
            self.metrics.model_unloaded(served.name, served.version)
        return chosen

    def set_default(self, name: str, version: str) -> None:
        """Make ``version`` the one that requests without a version get (after a promotion)."""
        versions = self.models.get(name, {})
        if version in versions:
            self.models[name] = {version: versions[version]} | {
                v: s for v, s in versions.items() if v != version
            }

    async def close(self) -> None:
        """Stop every batcher (draining queued work) and the inference thread."""
        for name in list(self.models):
            await self.unload(name)
        self._executor.shutdown(wait=True)

    # -- lookup -------------------------------------------------------------------------

    def _unknown(self, name: str, version: str | None) -> str:
        if name in self.models and version is not None:
            have = ", ".join(self.models[name])
            return f"model {name!r} has no version {version!r} loaded; loaded: {have}"
        served = ", ".join(sorted(self.models)) or "none"
        return f"no model named {name!r} is served; served models: {served}"

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The served version ``version`` of ``name``, or its default (first loaded) one.

        Raises:
            ModelNotServed: no such model or version.
            NotReady: it is still warming up.
        """
        versions = self.models.get(name)
        if not versions or (version is not None and version not in versions):
            raise ModelNotServed(self._unknown(name, version))
        served = versions[version] if version is not None else next(iter(versions.values()))
        if not served.ready:
            raise NotReady(f"{name}:{served.version} is not ready yet")
        return served

    def only(self) -> ServedModel:
        """The one served model, for routes without a model name.

        Raises:
            ModelNotServed: none is served.
            Conflict: several are (the request is ambiguous: it must name one).
        """
        if not self.models:
            raise ModelNotServed("no model is served yet; load one with POST /v1/admin/models")
        if len(self.models) > 1:
            raise Conflict(
                f"this route answers only while one model is served; served: "
                f"{', '.join(sorted(self.models))}: name one, as /v1/models/NAME/predict"
            )
        return self.get(next(iter(self.models)))

    def all(self) -> list[ServedModel]:
        """Every loaded version."""
        return [s for versions in self.models.values() for s in versions.values()]

    @property
    def ready(self) -> bool:
        """Ready: at least one model, all warmed up, nothing still loading."""
        served = self.all()
        return bool(served) and not self.loading and all(s.ready for s in served)
