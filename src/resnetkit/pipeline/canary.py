"""The rollout step's client of a running server: start the canary, wait for its outcome.

The server's own rollout analysis decides (``serve/rollout.py``): the pipeline starts the
rollout through the admin API and polls ``GET /v1/rollouts/{name}`` until the canary is
promoted, rolled back or aborted, or ``timeout_s`` passes. A resumed run whose rollout already
started waits on that one instead of starting another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from resnetkit.errors import ConfigError, ServeError

__all__ = ["FINAL_STATES", "check_server", "run_canary"]

FINAL_STATES = ("promoted", "rolled_back", "aborted")
_TIMEOUT_S = 30.0


def _request(
    method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.request(method, url, json=body, headers=headers, timeout=_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ServeError(f"cannot reach {url}: {exc}") from exc


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text[:200]))
    except ValueError:
        return response.text[:200]


def check_server(server: str, name: str, token: str | None) -> None:
    """Before any work: the server answers, serves ``name`` and the token is set.

    Raises:
        ConfigError: no admin token.
        ServeError: the server cannot be reached or does not serve ``name``.
    """
    if not token:
        raise ConfigError(
            "--server needs the admin token: --admin-token-file FILE or $RESNETKIT_ADMIN_TOKEN"
        )
    base = server.rstrip("/")
    response = _request("GET", f"{base}/v1/models")
    if response.status_code >= 400:
        raise ServeError(f"{base}/v1/models answered {response.status_code}: {_error(response)}")
    try:
        served = {str(m.get("name")) for m in response.json().get("models", [])}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ServeError(f"{base}/v1/models did not answer a model list") from exc
    if name not in served:
        known = ", ".join(sorted(served)) or "none"
        raise ServeError(f"{base} does not serve a model named {name!r} (it serves: {known})")


def _latest(base: str, name: str) -> dict[str, Any] | None:
    response = _request("GET", f"{base}/v1/rollouts/{name}")
    if response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise ServeError(f"rollout status: {response.status_code}: {_error(response)}")
    return dict(response.json())


def _start(
    base: str, name: str, version: int, token: str, canary: dict[str, Any], actor: str
) -> None:
    latest = _latest(base, name)
    if latest is not None and int(latest.get("canary_version", -1)) == version:
        return  # started by this run before it was killed: wait on it
    body = {**canary, "model": name, "canary": version, "actor": actor}
    response = _request("POST", f"{base}/v1/admin/rollouts", token, body)
    if response.status_code >= 400:
        raise ServeError(
            f"the server refused the rollout: {response.status_code}: {_error(response)}"
        )


def run_canary(
    server: str,
    name: str,
    version: int,
    *,
    token: str,
    canary: dict[str, Any],
    timeout_s: float,
    poll_s: float,
    actor: str,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start (or rejoin) the canary rollout of ``name:version`` and wait for its outcome.

    Returns:
        ``{"server", "state", "reason", "stable_version", "canary_version", "checks"}``;
        ``state`` is ``promoted``, ``rolled_back``, ``aborted`` or ``timeout``.

    Raises:
        ServeError: the server cannot be reached or refuses the rollout.
    """
    base = server.rstrip("/")
    _start(base, name, version, token, canary, actor)
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    seen = ""
    while True:
        last = _latest(base, name) or {}
        state = str(last.get("state", "unknown"))
        if int(last.get("canary_version", -1)) == version and state in FINAL_STATES:
            break
        if progress is not None and f"{state}{last.get('step')}" != seen:
            seen = f"{state}{last.get('step')}"
            progress(f"canary {name}:{version}: {state} at {last.get('canary_weight', 0):g}%")
        if time.monotonic() > deadline:
            state = "timeout"
            break
        time.sleep(poll_s)
    return {
        "server": base,
        "state": state,
        "reason": last.get("reason", f"no outcome within {timeout_s:g} s"),
        "stable_version": last.get("stable_version"),
        "canary_version": version,
        "checks": last.get("checks", []),
    }
