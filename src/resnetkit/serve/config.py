"""Building a server from one typed config: :class:`ServeConfig` → state → app → process.

Every default of ``resnetkit serve`` lives here, once; the CLI only parses flags into a
:class:`ServeConfig`. Tests and embedding programs build the same server without a
subprocess::

    config = ServeConfig(refs=("model-int8.onnx",), port=0)
    app = build_app(config)                       # an ASGI app (Starlette's TestClient, uvicorn)
    with TestClient(app) as client:               # the lifespan loads and warms the models
        client.get("/readyz")

    serve_forever(config)                         # what `resnetkit serve` runs: bound first,
                                                  # SIGTERM drains, SIGHUP reopens the log

Nothing here imports torch: serving an ONNX model (a file, or a registry version with an ONNX
artifact) runs on ONNX Runtime alone. ``backend="torch"`` imports it when the model loads.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnetkit.errors import ConfigError, ServeError
from resnetkit.serve.validation import MAX_PIXELS

__all__ = [
    "BACKENDS",
    "OOD_ACTIONS",
    "ServeConfig",
    "build_app",
    "build_server",
    "build_state",
    "serve_forever",
]

log = logging.getLogger("resnetkit.serve")

BACKENDS = ("auto", "onnx", "torch")
OOD_ACTIONS = ("flag", "reject")
DRAIN_TIMEOUT_S = 30  # how long SIGTERM waits for requests in flight (after keep-alive)
KEEP_ALIVE_S = 75.0  # nginx's default; above the 60 s idle timeout of proxies' upstream pools


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything a ``resnetkit serve`` process is told; the defaults are the CLI's.

    Attributes:
        refs: the models: ``name@alias``, ``name:V``, ``name``, a run directory, an ``.onnx``.
        registry: the registry URL (default ``$RESNETKIT_REGISTRY`` or ``./resnetkit.db``).
        host, port: where HTTP listens (port 0: any free port).
        grpc_port: where KServe V2 gRPC listens; None for no gRPC.
        backend: ``auto`` (ONNX Runtime, exporting torch weights once), ``onnx``, ``torch``.
        max_batch_size, max_delay_ms, queue_size, max_queue_wait_ms: dynamic batching and
            admission (see ``serve.batcher``).
        timeout_ms: a request's deadline (it does not stop a forward pass already running).
        threads: inference threads (None: every CPU this process may use).
        decode_threads: threads that decode and preprocess uploads.
        max_body_bytes: the largest request body (gRPC's message limit too).
        max_pixels: the largest image, in pixels, for every protocol.
        admin_token_file: the bearer token of the management routes (else
            ``$RESNETKIT_ADMIN_TOKEN``; neither: management routes are closed).
        prediction_log, prediction_log_rate: JSON lines of a sample of predictions.
        log_images, log_images_max_bytes: keep sampled uploads beside the log, bounded.
        access_log: one JSON line per request on stderr.
        ood_action: what an out-of-distribution flag does: ``flag`` (answer, with the flag)
            or ``reject`` (422 with the score). Versions without a detector are never flagged.
        rollout_poll_s: how often a replica reads rollout state from the registry.
        drain_timeout_s: how long SIGTERM waits for requests in flight.
        warmup_batches: warm-up forward passes before a version reports ready (torch: batch
            1 and full size alternately; ONNX Runtime: one pass at batch 1 is all it needs).
        header_timeout_s: a connection whose request headers are not complete this long
            after its first byte (or after it opened) is closed (slowloris).
        body_timeout_s: a request body still arriving this long after its headers is a 408.
        keep_alive_s: an idle keep-alive connection is closed after this long. Longer than
            the idle timeouts of common clients' and proxies' connection pools (httpx 5 s,
            aiohttp 15 s, nginx and cloud load balancers 60 s), so the client side retires
            an idle connection first: a request sent on a connection the server is closing
            at that instant is lost to a reset (the keep-alive race).
        max_connections: open connections beyond this many are answered 503 at once.
    """

    refs: tuple[str, ...]
    registry: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    backend: str = "auto"
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    queue_size: int = 256
    max_queue_wait_ms: float | None = None
    timeout_ms: float = 2000.0
    threads: int | None = None
    decode_threads: int = 2
    max_body_bytes: int = 10_000_000
    max_pixels: int = MAX_PIXELS
    admin_token_file: Path | None = None
    prediction_log: Path | None = None
    prediction_log_rate: float = 0.1
    log_images: bool = False
    log_images_max_bytes: int = 1_000_000_000
    access_log: bool = False
    ood_action: str = "flag"
    rollout_poll_s: float = 1.0
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    warmup_batches: int = 3
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = KEEP_ALIVE_S
    max_connections: int = 1000

    def __post_init__(self) -> None:
        if not self.refs:
            raise ConfigError("give at least one model to serve")
        _check_port("--port", self.port)
        if self.grpc_port is not None:
            _check_port("--grpc-port", self.grpc_port)
            if self.grpc_port == self.port and self.port != 0:
                raise ConfigError(f"--grpc-port and --port are both {self.port}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}")
        for flag in ("max_batch_size", "queue_size", "decode_threads", "max_body_bytes"):
            _at_least(flag, getattr(self, flag), 1)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)
        _at_least("warmup_batches", self.warmup_batches, 0)
        _at_least("max_delay_ms", self.max_delay_ms, 0)
        _at_least("max_connections", self.max_connections, 1)
        for flag in (
            "timeout_ms", "rollout_poll_s", "max_pixels", "drain_timeout_s", "header_timeout_s",
            "body_timeout_s", "keep_alive_s",
        ):  # fmt: skip
            _positive(flag, getattr(self, flag))
        if self.max_queue_wait_ms is not None:
            _positive("max_queue_wait_ms", self.max_queue_wait_ms)
        if not 0 <= self.prediction_log_rate <= 1:
            raise ConfigError(
                f"--prediction-log-rate must be in [0, 1], got {self.prediction_log_rate}"
            )
        if self.queue_size < self.max_batch_size:
            raise ConfigError("--queue-size must be at least --max-batch-size")
        if self.ood_action not in OOD_ACTIONS:
            raise ConfigError(f"--ood-action must be one of {', '.join(OOD_ACTIONS)}")
        if self.log_images and self.prediction_log is None:
            raise ConfigError("--log-images needs --prediction-log FILE: images are kept beside it")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_port(flag: str, port: int) -> None:
    if not 0 <= port < 65536:
        raise ConfigError(f"{flag} must be 0..65535, got {port}")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{_flag(name)} must be at least {low:g}, got {value:g}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{_flag(name)} must be more than 0, got {value:g}")


def build_state(config: ServeConfig, *, started_monotonic: float | None = None) -> Any:
    """The :class:`~resnetkit.serve.state.ServerState` of ``config``: pool, metrics, the
    rollout router and its control loop, auth, limits, prediction log and, with
    ``grpc_port``, the gRPC listener (started and stopped by the app's lifespan). Models
    load when the app starts, not here.

    Raises:
        ConfigError: an unreadable token file or prediction log.
    """
    from resnetkit.serve.auth import AdminAuth
    from resnetkit.serve.metrics import ServerMetrics
    from resnetkit.serve.pool import ModelPool, PoolSettings
    from resnetkit.serve.predlog import PredictionLog
    from resnetkit.serve.rollout_loop import RolloutLoop
    from resnetkit.serve.router import RolloutRouter
    from resnetkit.serve.state import HttpSettings, ServerState

    if config.backend == "torch" and config.threads:
        import torch  # one intra-op pool per process: set it before any model runs

        torch.set_num_threads(config.threads)
    metrics = ServerMetrics()
    pool = ModelPool(
        PoolSettings(
            backend=config.backend, threads=config.threads, max_batch_size=config.max_batch_size,
            max_delay_ms=config.max_delay_ms, queue_size=config.queue_size,
            max_queue_wait_ms=config.max_queue_wait_ms, registry=config.registry,
            warmup_batches=config.warmup_batches,
        ),
        metrics,
    )  # fmt: skip
    predlog = None
    if config.prediction_log is not None:
        predlog = PredictionLog(
            config.prediction_log,
            sample_rate=config.prediction_log_rate,
            log_images=config.log_images,
            max_image_bytes=config.log_images_max_bytes,
        )
        metrics.watch_prediction_log(predlog.drop_counts)
    router = RolloutRouter(pool, metrics)
    rollouts = RolloutLoop(
        pool, metrics, router, registry=config.registry, poll_s=config.rollout_poll_s
    )
    state = ServerState(
        pool=pool,
        metrics=metrics,
        router=router,
        rollouts=rollouts,
        auth=AdminAuth.from_sources(token_file=config.admin_token_file),
        http=HttpSettings(
            max_body_bytes=config.max_body_bytes,
            max_pixels=config.max_pixels,
            timeout_ms=config.timeout_ms,
            decode_threads=config.decode_threads,
            ood_action=config.ood_action,
        ),
        predlog=predlog,
        initial_refs=config.refs,
        started_monotonic=time.monotonic() if started_monotonic is None else started_monotonic,
    )
    if config.grpc_port is not None:
        from resnetkit.serve.grpc_v2 import GrpcServer

        state.grpc = GrpcServer(state, host=config.host, port=config.grpc_port)
    return state


def build_app(config: ServeConfig, *, started_monotonic: float | None = None) -> Any:
    """The ASGI app serving ``config`` (its state on ``app.state.resnetkit``)."""
    from resnetkit.serve.app import create_app

    state = build_state(config, started_monotonic=started_monotonic)
    app = create_app(state, body_timeout_s=config.body_timeout_s)
    app.state.resnetkit = state
    return app


def build_server(config: ServeConfig, *, started_monotonic: float | None = None) -> Any:
    """The uvicorn server of ``config`` and its state: ``(server, state)``, not started.

    What :func:`serve_forever` runs, without its signal handling: ``server.run(sockets=
    [listener])`` serves until ``server.should_exit`` is set (a test runs it in a thread on
    a real socket). The server drains on shutdown (:class:`~resnetkit.serve.process.
    DrainingServer`), bounds headers, keep-alive and connections, and stops if an initial
    model fails to load.
    """
    import uvicorn

    from resnetkit.serve.process import (
        CloseWhenDraining,
        DrainingServer,
        header_timeout_protocol,
    )

    app = build_app(config, started_monotonic=started_monotonic)
    state = app.state.resnetkit
    uv_config = uvicorn.Config(
        CloseWhenDraining(app), host=config.host, port=config.port, log_level="warning",
        access_log=False, timeout_graceful_shutdown=int(config.drain_timeout_s), lifespan="on",
        http=header_timeout_protocol(config.header_timeout_s),
        timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # a float works
        limit_concurrency=config.max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )  # fmt: skip
    server = DrainingServer(uv_config)
    state.on_startup_failure = lambda _message: setattr(server, "should_exit", True)
    return server, state


def _check_free(host: str, port: int, flag: str) -> None:
    """Fail before anything is announced when ``port`` is taken (gRPC binds it later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"{flag} {port} on {host} is in use (another server?): stop it or choose "
                f"another {flag}"
            ) from exc


def serve_forever(
    config: ServeConfig,
    *,
    started_monotonic: float | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the server of ``config`` in the foreground until SIGTERM or Ctrl-C.

    The HTTP port is bound (and the gRPC port checked) before anything is announced. SIGTERM
    stops accepting, answers every request already sent, and returns; SIGHUP reopens the
    prediction log (after logrotate).

    Raises:
        ConfigError: a port in use, or a bad setting.
        ServeError: a model could not be loaded at start-up.
    """
    from resnetkit.serve.process import bind_listener

    server, state = build_server(config, started_monotonic=started_monotonic)
    listener = bind_listener(config.host, config.port)  # a port in use fails here, unannounced
    try:
        if config.grpc_port:
            _check_free(config.host, config.grpc_port, "--grpc-port")
        port = listener.getsockname()[1]
        grpc = f", gRPC on {config.host}:{config.grpc_port}" if config.grpc_port else ""
        (announce or _stderr)(
            f"resnetkit serve: http://{config.host}:{port}/{grpc} (Ctrl-C or SIGTERM to stop)"
        )
        _run_with_signals(server, listener, state)
    finally:
        listener.close()
    if state.failed:
        raise ServeError(state.failed)


#: The most bytes of request line and headers a client may send (h11's own default).
MAX_HEADER_BYTES = 16 * 1024


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_with_signals(server: Any, listener: socket.socket, state: Any) -> None:
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to whatever handler
    # was installed before it: with this one the process exits 0 after the drain, as an
    # orchestrator expects, instead of dying of the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    # Log rotators send SIGHUP to have the log reopened (it would otherwise end the process).
    predlog = state.predlog
    previous_hup = None
    if predlog is not None:
        previous_hup = signal.signal(signal.SIGHUP, lambda *_: predlog.reopen())
    try:
        server.run(sockets=[listener])
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_hup is not None:
            signal.signal(signal.SIGHUP, previous_hup)
