"""``resnetkit pipeline serve``: Alertmanager's webhook, retraining on drift.

A small HTTP service beside the model server (never inside it): Alertmanager POSTs its
notifications to ``/v1/alerts``; a firing ``ResNetKitDriftDetected`` exports the labelled
production images of ``--log`` and runs the pipeline on them, one run per ``--cooldown-s``.
``GET /v1/pipelines`` lists the runs, ``/metrics`` counts them. See
:mod:`resnetkit.pipeline.webhook`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from resnetkit.errors import ConfigError

TOKEN_ENV = "RESNETKIT_WEBHOOK_TOKEN"
ADMIN_TOKEN_ENV = "RESNETKIT_ADMIN_TOKEN"


def add_parser(sub: Any) -> None:
    """Register the ``serve`` leaf under the ``pipeline`` group."""
    p = sub.add_parser(
        "serve",
        help="Alertmanager webhook: run the pipeline when drift fires",
        description="Receive Alertmanager's webhook; on a firing ResNetKitDriftDetected with "
        "enough new labelled images, export them and run the pipeline (one per cooldown).",
    )
    p.add_argument("--pipeline", type=Path, metavar="FILE", help="pipeline file (TOML)")
    p.add_argument("--name", required=True, help="the registry model to retrain")
    p.add_argument("--server", metavar="URL", help="model server for the canary rollout")
    p.add_argument(
        "--log", required=True, type=Path, metavar="FILE",
        help="the model server's --prediction-log (with --log-images), readable here",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="runs and their files")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=9095, help="port to listen on (default 9095)")
    p.add_argument("--cooldown-s", type=float, default=3600.0, help="one run per this long")
    p.add_argument(
        "--min-new-labels", type=int, default=100,
        help="labelled images newer than the last run needed to retrain (default 100)",
    )  # fmt: skip
    p.add_argument("--holdout", type=float, default=0.2, help="newest share kept for the gate")
    p.add_argument(
        "--token-file", type=Path,
        help=f"bearer token Alertmanager must send (else ${TOKEN_ENV}; neither: none needed)",
    )  # fmt: skip
    p.add_argument(
        "--admin-token-file", type=Path,
        help=f"the model server's admin token, for the rollout (else ${ADMIN_TOKEN_ENV})",
    )  # fmt: skip
    p.set_defaults(func=run_pipeline_serve)


def _token(path: Path | None, env: str, flag: str) -> str | None:
    if path is None:
        return os.environ.get(env) or None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"{flag} {path} is empty")
    return token


def run_pipeline_serve(args: argparse.Namespace) -> int:
    """Run ``pipeline serve`` until interrupted."""
    import uvicorn

    from resnetkit.pipeline.webhook import (
        RetrainService,
        WebhookSettings,
        create_webhook_app,
        pipeline_runner,
    )

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    settings = WebhookSettings(
        prediction_log=args.log, out=args.out, cooldown_s=args.cooldown_s,
        min_new_labels=args.min_new_labels, holdout=args.holdout,
        token=_token(args.token_file, TOKEN_ENV, "--token-file"),
    )  # fmt: skip
    runner = pipeline_runner(
        args.pipeline, name=args.name, server=args.server,
        admin_token=_token(args.admin_token_file, ADMIN_TOKEN_ENV, "--admin-token-file"),
    )  # fmt: skip
    service = RetrainService(settings, runner)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per rollout poll
    print(f"pipeline webhook on http://{args.host}:{args.port}/v1/alerts", flush=True)
    try:
        uvicorn.run(
            create_webhook_app(service), host=args.host, port=args.port, log_level="warning"
        )
    finally:
        service.close()
    return 0
