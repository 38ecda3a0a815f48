"""The admin bearer token that guards the management API.

The token comes from ``--admin-token-file`` (preferred: it stays out of the process table
and the environment) or ``RESNETKIT_ADMIN_TOKEN``. Without either, management is off and
every management call is refused. :meth:`AdminAuth.check` raises, and the app maps:

- management off → :class:`~resnetkit.errors.PermissionDenied` (403) with
  :data:`MANAGEMENT_DISABLED`;
- no or malformed ``Authorization`` header → :class:`~resnetkit.errors.Unauthenticated`
  (401; the app adds ``WWW-Authenticate:`` :data:`WWW_AUTHENTICATE`);
- a wrong token → :class:`~resnetkit.errors.PermissionDenied` (403).

Only a SHA-256 digest of the token is kept, and digests are compared with
:func:`hmac.compare_digest`, so the comparison takes the same time whatever the token sent,
its length included. No message, ``repr`` or log line contains a token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from starlette.requests import Request

from resnetkit.errors import ConfigError, PermissionDenied, Unauthenticated

__all__ = [
    "MANAGEMENT_DISABLED",
    "TOKEN_ENV_VAR",
    "WWW_AUTHENTICATE",
    "AdminAuth",
]

TOKEN_ENV_VAR = "RESNETKIT_ADMIN_TOKEN"
WWW_AUTHENTICATE = 'Bearer realm="resnetkit"'
MANAGEMENT_DISABLED = "management is disabled: set RESNETKIT_ADMIN_TOKEN or --admin-token-file"
_SCHEME = "bearer"


class AdminAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured admin token.

    Args:
        token: the admin token; None (or empty) turns management off. It must be printable
            ASCII without spaces, as a bearer token in a header is.

    Raises:
        ConfigError: for a token a header could not carry (the message does not echo it).
    """

    def __init__(self, token: str | None) -> None:
        token = (token or "").strip()
        if token and not _is_header_safe(token):
            raise ConfigError(
                "the admin token must be printable ASCII without spaces "
                "(e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        self._digest = _digest(token.encode("ascii")) if token else None

    @classmethod
    def from_sources(
        cls,
        *,
        token_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> AdminAuth:
        """Build from ``--admin-token-file`` if given, else from ``RESNETKIT_ADMIN_TOKEN``.

        Args:
            token_file: a file holding the token; surrounding whitespace is stripped.
            environ: the environment to read (``os.environ`` when None). An empty
                variable counts as unset.

        Raises:
            ConfigError: naming the token file when it cannot be read or is empty, or for a
                token a header could not carry.
        """
        if token_file is not None:
            return cls(_read_token_file(Path(token_file)))
        env = os.environ if environ is None else environ
        return cls(env.get(TOKEN_ENV_VAR))

    @property
    def enabled(self) -> bool:
        """Whether a token is configured (management on)."""
        return self._digest is not None

    def check(self, authorization_header: str | None) -> None:
        """Let the request through, or raise why not.

        Args:
            authorization_header: the request's ``Authorization`` header, or None.

        Raises:
            PermissionDenied: management is off, or the token is wrong.
            Unauthenticated: the header is missing or is not ``Bearer <token>``.
        """
        if self._digest is None:
            raise PermissionDenied(MANAGEMENT_DISABLED)
        if not authorization_header or not authorization_header.strip():
            raise Unauthenticated(
                "missing Authorization header: send 'Authorization: Bearer <token>'"
            )
        scheme, _, credentials = authorization_header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != _SCHEME or not credentials:
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <token>'")
        sent = _digest(credentials.encode("utf-8", "surrogatepass"))
        if not hmac.compare_digest(sent, self._digest):
            raise PermissionDenied("invalid admin token")

    def __repr__(self) -> str:
        return f"AdminAuth(enabled={self.enabled})"


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"admin token file {path}: cannot read it ({reason})") from exc
    if not token:
        raise ConfigError(f"admin token file {path} is empty; write the admin token in it")
    return token


def _is_header_safe(token: str) -> bool:
    return token.isascii() and token.isprintable() and not any(c.isspace() for c in token)


def _digest(token: bytes) -> bytes:
    # Comparing fixed-size digests keeps compare_digest constant-time for any length sent.
    return hashlib.sha256(token).digest()


#: Who the audit log names for a change made through the management API.
ADMIN_ACTOR = "admin-api"


def admin_only(auth_of: Callable[[], AdminAuth]) -> list[Callable[[Request], None]]:
    """The one guard of every management route (models, rollouts, faults): the request must
    carry the admin token, checked before its body is read. Use as
    ``@api.post(path, dependencies=admin_only(...))`` (:class:`resnetkit.serve.routes.Api`).

    Args:
        auth_of: returns the server's :class:`AdminAuth` (read per request, so a test or an
            operator may replace it).
    """

    def require_admin(request: Request) -> None:
        auth_of().check(request.headers.get("authorization"))

    return [require_admin]
