"""``resnetkit serve REF [REF ...]``: the inference server, in the foreground.

Every REF (``name@production``, ``name:3``, ``name``, a run directory or an ``.onnx`` file) is
checked before the server starts; loading and warm-up then run while the server already
answers ``/healthz`` (``/readyz`` turns 200 when every model is ready). The port is bound
before anything is announced: a port in use is one ``error:`` line. SIGTERM or Ctrl-C stops
accepting, answers every request already sent (keep-alive clients are told
``Connection: close``), and exits 0. SIGHUP reopens the prediction log (after logrotate).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from resnetkit.cli.common import add_registry_flag, check_at_least
from resnetkit.errors import ConfigError, ServeError
from resnetkit.export import BACKEND_KINDS

_PROCESS_START = time.monotonic()


def add_parser(subparsers: Any) -> None:
    """Register ``serve``."""
    p = subparsers.add_parser(
        "serve",
        help="serve models over HTTP: predict, KServe V2, metrics",
        description="Serve one or more models with dynamic batching, the KServe V2 "
        "protocol and Prometheus metrics.",
    )
    p.add_argument("refs", nargs="+", metavar="REF", help="name@alias, name:V, run dir, .onnx")
    add_registry_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto")
    p.add_argument("--max-batch-size", type=int, default=32, help="samples per forward pass")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="longest wait to fill a batch")
    p.add_argument("--queue-size", type=int, default=256, help="samples waiting, per model")
    p.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=None,
        help="refuse (503) a request whose estimated queue wait is over this: under overload "
        "the requests let in stay fast (default: no limit but --queue-size)",
    )
    p.add_argument("--timeout-ms", type=float, default=2000.0, help="per-request deadline")
    p.add_argument("--threads", type=int, help="inference threads (default: all CPUs)")
    p.add_argument("--decode-threads", type=int, default=2, help="image decoding threads")
    p.add_argument("--max-body-bytes", default="10MB", help="largest request body, e.g. 10MB")
    p.add_argument("--admin-token-file", type=Path, help="bearer token for management routes")
    p.add_argument("--prediction-log", type=Path, help="JSON lines of sampled predictions")
    p.add_argument("--prediction-log-rate", type=float, default=0.1, help="share logged")
    p.add_argument(
        "--log-images",
        action="store_true",
        help="keep each logged request's image (V1 uploads) as a file in images/ beside the "
        "prediction log, named by its SHA-256; the line holds its relative path",
    )
    p.add_argument(
        "--log-images-max-bytes",
        default="1GB",
        help="most the logged images may take on disk; the oldest are deleted first (1GB)",
    )
    p.add_argument("--access-log", action="store_true", help="one JSON line per request")
    p.add_argument(
        "--rollout-poll-s",
        type=float,
        default=1.0,
        help="how often a replica reads the rollout state from the registry",
    )
    p.set_defaults(func=run_serve)


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    for flag in ("max_batch_size", "queue_size", "threads", "decode_threads"):
        check_at_least(f"--{flag.replace('_', '-')}", getattr(args, flag), 1)
    check_at_least("--max-delay-ms", args.max_delay_ms, 0)
    check_at_least("--max-queue-wait-ms", args.max_queue_wait_ms, 0, strict=True)
    check_at_least("--timeout-ms", args.timeout_ms, 0, strict=True)
    check_at_least("--rollout-poll-s", args.rollout_poll_s, 0, strict=True)
    if not 0 <= args.prediction_log_rate <= 1:
        raise ConfigError(
            f"--prediction-log-rate must be in [0, 1], got {args.prediction_log_rate}"
        )
    if args.queue_size < args.max_batch_size:
        raise ConfigError("--queue-size must be at least --max-batch-size")
    if args.log_images and args.prediction_log is None:
        raise ConfigError("--log-images needs --prediction-log FILE: images are kept beside it")


def _logging(access: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name, level in (("resnetkit.serve", logging.INFO), ("resnetkit.access", logging.INFO)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level if name != "resnetkit.access" or access else logging.WARNING)
        logger.propagate = False


def run_serve(args: argparse.Namespace) -> int:
    """Check every argument and reference, then run uvicorn until SIGTERM."""
    import torch
    import uvicorn

    from resnetkit.export import load_model_ref
    from resnetkit.serve.app import HttpSettings, ServerState, create_app
    from resnetkit.serve.auth import AdminAuth
    from resnetkit.serve.metrics import ServerMetrics
    from resnetkit.serve.pool import ModelPool, PoolSettings
    from resnetkit.serve.predlog import PredictionLog
    from resnetkit.serve.process import CloseWhenDraining, DrainingServer, bind_listener
    from resnetkit.serve.router import RolloutController
    from resnetkit.serve.validation import parse_size

    _check(args)
    http = HttpSettings(
        max_body_bytes=parse_size(args.max_body_bytes),
        timeout_ms=args.timeout_ms,
        decode_threads=args.decode_threads,
    )
    max_image_bytes = parse_size(args.log_images_max_bytes)
    for ref in args.refs:  # fail in the first second on a wrong reference, before binding
        load_model_ref(ref, registry=args.registry)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = {"onnx": "onnx", "torch": "torch"}.get(args.backend, "auto")
    assert backend in BACKEND_KINDS
    metrics = ServerMetrics()
    pool = ModelPool(
        PoolSettings(
            backend=backend, threads=args.threads, max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms, queue_size=args.queue_size,
            max_queue_wait_ms=args.max_queue_wait_ms, registry=args.registry,
        ),
        metrics,
    )  # fmt: skip
    predlog = None
    if args.prediction_log is not None:
        predlog = PredictionLog(
            args.prediction_log,
            sample_rate=args.prediction_log_rate,
            log_images=args.log_images,
            max_image_bytes=max_image_bytes,
        )
    router = RolloutController(pool, metrics, registry=args.registry, poll_s=args.rollout_poll_s)
    state = ServerState(
        pool=pool,
        metrics=metrics,
        router=router,
        auth=AdminAuth.from_sources(token_file=args.admin_token_file),
        http=http,
        predlog=predlog,
        initial_refs=tuple(args.refs),
        started_monotonic=_PROCESS_START,
    )
    _logging(args.access_log)
    config = uvicorn.Config(
        CloseWhenDraining(create_app(state)), host=args.host, port=args.port,
        log_level="warning", access_log=False, timeout_graceful_shutdown=30, lifespan="on",
    )  # fmt: skip
    server = DrainingServer(config)
    state.on_startup_failure = lambda _message: setattr(server, "should_exit", True)
    listener = bind_listener(args.host, args.port)  # a port in use fails here, unannounced
    print(
        f"resnetkit serve: http://{args.host}:{args.port}/ (Ctrl-C or SIGTERM to stop)",
        file=sys.stderr,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to whatever handler
    # was installed before it: with this one the process exits 0 after the drain, as an
    # orchestrator expects, instead of dying of the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    # Log rotators send SIGHUP to have the log reopened (it would otherwise end the process).
    previous_hup = None
    if predlog is not None:
        previous_hup = signal.signal(signal.SIGHUP, lambda *_: predlog.reopen())
    try:
        server.run(sockets=[listener])
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_hup is not None:
            signal.signal(signal.SIGHUP, previous_hup)
        listener.close()
    if state.failed:
        raise ServeError(state.failed)
    return 0
