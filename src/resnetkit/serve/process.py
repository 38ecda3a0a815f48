"""The server process around the ASGI app: the port bound first, a drain that loses nothing.

:func:`bind_listener` binds the port before anything is announced, so a port in use is one
clear error instead of a banner followed by uvicorn's ``[Errno 98]``.

:class:`DrainingServer` changes how uvicorn stops. uvicorn's own shutdown stops listening and
at once closes every idle keep-alive connection, and closes a busy one right after its
response. A client that is sending its next request on such a connection at that moment
gets a read error for a request it had already sent. Here, on SIGTERM:

1. the listening socket closes (new connections are refused: nothing was sent on them);
2. every response from then on carries ``Connection: close`` (:class:`CloseWhenDraining`), so
   each client learns, in the answer to the request it sent, not to send another one on it;
3. the server waits until the open connections have closed, at most :data:`DRAIN_IDLE_S`
   (or the keep-alive timeout if shorter, after which uvicorn closes an idle connection in
   normal service too): a client that sends again in that time learns ``Connection: close``
   from its answer, and one that stays idle is closed after it;
4. uvicorn's shutdown then finishes what is in flight and runs the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import uvicorn

from resnetkit.errors import ConfigError

__all__ = [
    "DRAIN_IDLE_S",
    "CloseWhenDraining",
    "DrainingServer",
    "bind_listener",
    "header_timeout_protocol",
]

_POLL_S = 0.05
#: The most SIGTERM waits for open (idle keep-alive) connections to close before stopping.
DRAIN_IDLE_S = 10.0
_CLOSE_HEADER = (b"connection", b"close")


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), for :meth:`DrainingServer.run`.

    Raises:
        ConfigError: the host does not resolve, the port is in use, or binding is refused.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host}: not an address of this machine ({exc.strerror})"
        ) from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use (another server?): stop it or choose "
                "another --port"
            ) from exc
        raise ConfigError(f"cannot listen on {host} port {port} ({exc.strerror})") from exc
    return sock


class CloseWhenDraining:
    """ASGI wrapper: once ``server.draining`` is set, every response says ``Connection: close``.

    Args:
        app: the ASGI application.
        server: the :class:`DrainingServer` whose state it follows (set after construction).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server: DrainingServer | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Any) -> None:
            draining = self.server is not None and self.server.draining
            if message["type"] == "http.response.start" and draining:
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, _CLOSE_HEADER]}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose shutdown lets keep-alive clients leave without a lost request.

    Wrap the app in :class:`CloseWhenDraining` (this server attaches itself to it).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.draining = False
        if isinstance(config.app, CloseWhenDraining):
            config.app.server = self

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, let open connections finish with ``Connection: close``, then stop."""
        self.draining = True
        for server in self.servers:
            server.close()  # uvicorn's shutdown closes them again: a no-op
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.config.timeout_keep_alive, DRAIN_IDLE_S)
        while self.server_state.connections and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(_POLL_S)
        await super().shutdown(sockets)


def header_timeout_protocol(header_timeout_s: float) -> type[Any]:
    """uvicorn's h11 protocol with a deadline on request headers.

    uvicorn bounds an idle keep-alive connection but not one that is sending its headers:
    a client that opens a connection and sends nothing, or a header byte a second, holds it
    forever. Here a connection whose request line and headers are not complete
    ``header_timeout_s`` after it opened (or after the first byte of its next request) is
    closed. A request's body is bounded by the ASGI middleware (``serve.http.AccessLog``).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = None
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # headers still incomplete: a slow or stalled client

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm_header_timer()
            elif self.conn.their_state is h11.IDLE:
                self._arm_header_timer()  # part of a request line or headers so far
            else:
                self._disarm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol
