"""The one exception tree of resnetkit.

Every error a user can cause is a :class:`ResNetKitError`; its message says what is wrong
and what to do. Third-party exceptions are translated where they cross into the package
(``raise DataError(...) from exc``), so callers catch one base class::

    ResNetKitError
    ├── ConfigError            a setting or argument that makes no sense
    ├── ModelNotFoundError     an unknown model name (also a ConfigError)
    ├── DataError              a dataset that is missing, corrupt or unreadable
    ├── CheckpointError        weights or checkpoints that cannot be read or do not fit
    ├── TrainingError          a run that diverged (non-finite loss or gradient)
    ├── ExportError            an export or a parity check that failed
    ├── RegistryError          the model registry refused or failed an operation
    │   ├── IntegrityError     an artifact whose bytes do not match its digest
    │   └── RegistryUnavailable  the registry database is unreachable, hung or locked (HTTP 503)
    ├── ServeError             a request the server cannot answer
    │   ├── InvalidInput       the request itself is wrong (HTTP 400)
    │   │   ├── RequestTimeout        a body that did not arrive in time (HTTP 408)
    │   │   ├── PayloadTooLarge       a body or an image over the limit (HTTP 413)
    │   │   └── UnsupportedMediaType  a content type the route does not take (HTTP 415)
    │   ├── NotFound           what the request names is not here (HTTP 404)
    │   │   └── ModelNotServed     no loaded model has that name or version
    │   ├── Conflict           the request clashes with the server's state (HTTP 409)
    │   ├── ModelOutputError   the model answered non-finite numbers (HTTP 500)
    │   ├── NotReady           the model is loading or warming up (HTTP 503)
    │   ├── QueueFull          backpressure: try again later (HTTP 503)
    │   ├── DeadlineExceeded   the request waited past its deadline (HTTP 504)
    │   ├── Unauthenticated    no or malformed credentials (HTTP 401)
    │   └── PermissionDenied   credentials given but wrong (HTTP 403)
    ├── DriftError             drift detection could not run on the data given
    ├── StorageFull            no space left to write a file whole (the previous one is kept)
    └── MissingDependency      an optional extra (PyTorch, ...) that this install lacks
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Conflict",
    "DataError",
    "DeadlineExceeded",
    "DriftError",
    "ExportError",
    "IntegrityError",
    "InvalidInput",
    "MissingDependency",
    "ModelNotFoundError",
    "ModelNotServed",
    "ModelOutputError",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "PermissionDenied",
    "QueueFull",
    "RegistryError",
    "RegistryUnavailable",
    "RequestTimeout",
    "ResNetKitError",
    "ServeError",
    "StorageFull",
    "TrainingError",
    "Unauthenticated",
    "UnsupportedMediaType",
]


class ResNetKitError(Exception):
    """Base class of every error resnetkit raises on purpose."""


class ConfigError(ResNetKitError, ValueError):
    """A configuration value or argument is invalid."""


class ModelNotFoundError(ConfigError, KeyError):
    """No model is registered under the requested name."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class DataError(ResNetKitError):
    """A dataset is missing, corrupt or unreadable."""


class CheckpointError(ResNetKitError):
    """Weights or a checkpoint cannot be read or do not fit the model."""


class TrainingError(ResNetKitError):
    """Training cannot go on: the loss or a gradient stopped being finite."""


class ExportError(ResNetKitError):
    """An export failed or its parity check exceeded the tolerance."""


class RegistryError(ResNetKitError):
    """The model registry refused or failed an operation."""


class IntegrityError(RegistryError):
    """An artifact's bytes do not match the digest recorded for it."""


class RegistryUnavailable(RegistryError):
    """The registry database cannot be reached, did not answer in time, or stayed locked
    by another writer past the timeout: a dependency failure, not the caller's mistake."""


class ServeError(ResNetKitError):
    """The server cannot answer a request."""


class InvalidInput(ServeError):
    """A request is malformed or its input does not fit the model."""


class RequestTimeout(InvalidInput):
    """The client did not send its request body within the server's body timeout (a slow or
    stalled client: the connection is closed, the request never runs)."""


class PayloadTooLarge(InvalidInput):
    """A request body or a decoded image is over the configured limit."""


class UnsupportedMediaType(InvalidInput):
    """The request's content type is not one the route accepts."""


class NotFound(ServeError):
    """What the request names (a request id for feedback, a model) is not on this server."""


class ModelNotServed(NotFound):
    """No loaded model (or version) has the requested name."""


class Conflict(ServeError):
    """The request conflicts with the current state (a rollout already running, an ambiguous
    target such as ``/v1/predict`` while several models are served)."""


class ModelOutputError(ServeError):
    """The model produced non-finite outputs (NaN or infinity): a server-side model failure."""


class NotReady(ServeError):
    """The model exists but is still loading or warming up."""


class QueueFull(ServeError):
    """The request queue is full; the client should retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServeError):
    """The request waited past its deadline and was dropped before inference."""


class Unauthenticated(ServeError):
    """A protected route was called without (well-formed) credentials."""


class PermissionDenied(ServeError):
    """A protected route was called with credentials that are not valid."""


class DriftError(ResNetKitError):
    """Drift detection cannot run on the data given."""


class StorageFull(ResNetKitError):
    """A file could not be written whole for lack of space (or quota) on its disk; nothing
    half-written is left at its path, and the file it would have replaced is unchanged."""


#: Optional module → the extra of resnetkit that installs it.
EXTRAS = {"torch": "train", "onnxscript": "train", "torchvision": "train"}


class MissingDependency(ResNetKitError):
    """A feature needs a package this install lacks (a plain install serves ONNX models
    without PyTorch; training, export and Grad-CAM need ``resnetkit[train]``)."""

    @classmethod
    def for_module(cls, module: str | None, what: str) -> MissingDependency:
        """The error for ``what`` failing on a missing ``module``, naming the extra."""
        extra = EXTRAS.get((module or "").partition(".")[0], "train")
        return cls(
            f"{what} needs {module or 'a package'}, which this install lacks: "
            f"pip install 'resnetkit[{extra}]'"
        )
