"""``resnetkit serve REF [REF ...]``: the inference server, in the foreground.

Every REF (``name@production``, ``name:3``, ``name``, a run directory or an ``.onnx`` file) is
checked before the server starts; loading and warm-up then run while the server already
answers ``/healthz`` (``/readyz`` turns 200 when every model is ready). The port is bound
before anything is announced: a port in use is one ``error:`` line. SIGTERM or Ctrl-C stops
accepting, answers every request already sent (keep-alive clients are told
``Connection: close``), and exits 0. SIGHUP reopens the prediction log (after logrotate).

This module only parses flags into a :class:`resnetkit.serve.config.ServeConfig` (where every
default lives) and calls :func:`resnetkit.serve.config.serve_forever`. Serving an ONNX model
imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from resnetkit.cli.common import add_registry_flag

_PROCESS_START = time.monotonic()


def _defaults() -> dict[str, Any]:
    from resnetkit.serve.config import ServeConfig

    return {f.name: f.default for f in dataclasses.fields(ServeConfig)}


def add_parser(subparsers: Any) -> None:
    """Register ``serve``."""
    d = _defaults()
    p = subparsers.add_parser(
        "serve",
        help="serve models over HTTP and gRPC: predict, KServe V2, metrics",
        description="Serve one or more models with dynamic batching, the KServe V2 "
        "protocol (REST and gRPC) and Prometheus metrics.",
    )
    p.add_argument("refs", nargs="+", metavar="REF", help="name@alias, name:V, run dir, .onnx")
    add_registry_flag(p)
    p.add_argument("--host", default=d["host"], help="address to listen on")
    p.add_argument("--port", type=int, default=d["port"], help="HTTP port (0: any free one)")
    p.add_argument(
        "--grpc-port", type=int, default=d["grpc_port"],
        help="also serve KServe V2 over gRPC on this port (default: no gRPC)",
    )  # fmt: skip
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default=d["backend"])
    p.add_argument("--max-batch-size", type=int, default=d["max_batch_size"],
                   help="samples per forward pass")  # fmt: skip
    p.add_argument("--max-delay-ms", type=float, default=d["max_delay_ms"],
                   help="longest wait to fill a batch")  # fmt: skip
    p.add_argument("--queue-size", type=int, default=d["queue_size"],
                   help="samples waiting, per model")  # fmt: skip
    p.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=d["max_queue_wait_ms"],
        help="refuse (503) a request whose estimated queue wait is over this: under overload "
        "the requests let in stay fast (default: no limit but --queue-size)",
    )
    p.add_argument(
        "--timeout-ms", type=float, default=d["timeout_ms"],
        help="per-request deadline: a request still queued then gets 504 (a forward pass "
        "already running is not interrupted)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, help="inference threads (default: all CPUs)")
    p.add_argument("--decode-threads", type=int, default=d["decode_threads"],
                   help="image decoding threads")  # fmt: skip
    p.add_argument("--max-body-bytes", default="10MB",
                   help="largest request body and gRPC message, e.g. 10MB")  # fmt: skip
    p.add_argument("--admin-token-file", type=Path, help="bearer token for management routes")
    p.add_argument("--prediction-log", type=Path, help="JSON lines of sampled predictions")
    p.add_argument("--prediction-log-rate", type=float, default=d["prediction_log_rate"],
                   help="share logged")  # fmt: skip
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
        "--ood-action",
        choices=("flag", "reject"),
        default=d["ood_action"],
        help="an out-of-distribution input is answered with its flag (flag), or refused with "
        "422 and its score (reject)",
    )
    p.add_argument(
        "--rollout-poll-s",
        type=float,
        default=d["rollout_poll_s"],
        help="how often a replica reads the rollout state from the registry",
    )
    _add_client_limits(p, d)
    p.set_defaults(func=run_serve)


def _add_client_limits(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    """Bounds on slow, stalled and idle clients (see docs/runbooks.md, "Game days")."""
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=d["header_timeout_s"],
        help="close a connection whose request headers take longer than this",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=d["body_timeout_s"],
        help="answer 408 to a request body still arriving this long after its headers",
    )
    p.add_argument(
        "--keep-alive-s",
        type=float,
        default=d["keep_alive_s"],
        help="close an idle keep-alive connection after this long",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d["max_connections"],
        help="answer 503 at once beyond this many open connections",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~resnetkit.serve.config.ServeConfig` the flags describe.

    Raises:
        ConfigError: a flag out of range, naming it.
    """
    from resnetkit.serve.config import ServeConfig
    from resnetkit.serve.validation import parse_size

    return ServeConfig(
        refs=tuple(args.refs), registry=args.registry, host=args.host, port=args.port,
        grpc_port=args.grpc_port, backend=args.backend, max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms, queue_size=args.queue_size,
        max_queue_wait_ms=args.max_queue_wait_ms, timeout_ms=args.timeout_ms,
        threads=args.threads, decode_threads=args.decode_threads,
        max_body_bytes=parse_size(args.max_body_bytes), admin_token_file=args.admin_token_file,
        prediction_log=args.prediction_log, prediction_log_rate=args.prediction_log_rate,
        log_images=args.log_images, log_images_max_bytes=parse_size(args.log_images_max_bytes),
        access_log=args.access_log, ood_action=args.ood_action, rollout_poll_s=args.rollout_poll_s,
        header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
        keep_alive_s=args.keep_alive_s, max_connections=args.max_connections,
    )  # fmt: skip


def _logging(access: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name, level in (("resnetkit.serve", logging.INFO), ("resnetkit.access", logging.INFO)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level if name != "resnetkit.access" or access else logging.WARNING)
        logger.propagate = False


def run_serve(args: argparse.Namespace) -> int:
    """Check every argument and reference, then serve until SIGTERM."""
    from resnetkit.export import load_model_ref
    from resnetkit.serve.config import serve_forever

    config = config_from_args(args)
    for ref in config.refs:  # fail in the first second on a wrong reference, before binding
        load_model_ref(ref, registry=config.registry)
    _logging(config.access_log)
    serve_forever(config, started_monotonic=_PROCESS_START)
    return 0
