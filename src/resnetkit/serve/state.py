"""What every route shares: the model pool, metrics, auth, limits, logs, thread pools."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from typing import Any

from resnetkit.errors import ConfigError
from resnetkit.serve.auth import AdminAuth
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.pool import ModelPool
from resnetkit.serve.predlog import PredictionLog
from resnetkit.serve.rollout_loop import RolloutLoop
from resnetkit.serve.router import RolloutRouter
from resnetkit.serve.validation import MAX_PIXELS

__all__ = ["HttpSettings", "ServerState"]


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """Limits of the HTTP layer."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = MAX_PIXELS
    timeout_ms: float = 2000.0
    decode_threads: int = 2
    max_top_k: int = 100
    ood_action: str = "flag"  # or "reject": see ServeConfig

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.timeout_ms <= 0 or self.decode_threads < 1:
            raise ConfigError(
                "--max-body-bytes, --timeout-ms and decode threads must be positive, got "
                f"{self.max_body_bytes}, {self.timeout_ms}, {self.decode_threads}"
            )


@dataclasses.dataclass
class ServerState:
    """Everything the routes share; built by the CLI (or a test) and handed to the app."""

    pool: ModelPool
    metrics: ServerMetrics
    auth: AdminAuth
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    predlog: PredictionLog | None = None
    initial_refs: tuple[str, ...] = ()
    started_monotonic: float = dataclasses.field(default_factory=time.monotonic)
    failed: str | None = None
    router: RolloutRouter | None = None  # per request: routing, counts, feedback
    rollouts: RolloutLoop | None = None  # the control loop: registry, leases, decisions
    decode_pool: concurrent.futures.ThreadPoolExecutor | None = None
    background: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)
    on_startup_failure: Any = None  # called with the message when an initial model fails
    grpc: Any = None  # a serve.grpc_v2.GrpcServer, started and stopped with the app
    app_started_monotonic: float | None = None  # when the lifespan began: imports were done

    def decoder(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread pool that decodes and preprocesses uploads."""
        if self.decode_pool is None:
            self.decode_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.http.decode_threads, thread_name_prefix="decode"
            )
        return self.decode_pool
