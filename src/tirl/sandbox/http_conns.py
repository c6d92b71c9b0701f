"""The connections of ``tirl sandbox serve``: a cap, a deadline for each request's headers, and room
for a real client when the cap is reached.

aiohttp brings the body-size cap, keep-alive and flow control, but neither a connection cap nor a
deadline for headers, so its protocol is wrapped here. At the cap, the connection idle longest (no
request in progress: its headers not yet in, or kept alive between requests) is dropped for the new
one: refusing new connections instead let 256 idle ones lock every client out. A connection whose
request headers do not arrive within ``read_timeout`` of its opening (or of its previous response)
is aborted, not closed: a close waits for the write buffer to drain, and a client that does not
read would keep it. Not covered: requests in progress are never dropped here; ``http.make_app``
bounds them (turns, body and write deadlines).
"""
from __future__ import annotations

import asyncio

from aiohttp import web


class Connections:
    """The open connections of one server, and which of them may be dropped (idle, longest first)."""

    def __init__(self, cap: int, read_timeout: float):
        self.cap, self.read_timeout = cap, read_timeout
        self.open = 0
        self.idle: dict[_Guard, None] = {}  # insertion order: idle longest first

    def make_room(self) -> bool:
        """Whether a new connection may be served, after dropping the longest-idle one at the cap."""
        if self.open < self.cap:
            return True
        if not self.idle:
            return False  # every connection is a request in progress: a real overload
        next(iter(self.idle)).drop()
        return True


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counted, timed while idle, droppable while idle."""

    by_transport: dict[int, _Guard] = {}  # id(transport) -> guard, for the middleware (every server here)

    def __init__(self, inner: asyncio.Protocol, conns: Connections):
        self.inner, self.conns = inner, conns
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        conns.open += 1  # now, not in connection_made: a burst of accepts runs every factory first

    @classmethod
    def of(cls, transport) -> _Guard | None:
        return cls.by_transport.get(id(transport))

    def connection_made(self, transport):
        self.transport = transport
        _Guard.by_transport[id(transport)] = self
        self.inner.connection_made(transport)
        self.waiting()

    def waiting(self) -> None:
        """No request in progress: the next one's headers must come in time; droppable meanwhile."""
        if self.transport is None:
            return
        self._stop_timer()
        self.conns.idle[self] = None
        self.timer = asyncio.get_running_loop().call_later(self.conns.read_timeout, self.drop)

    def serving(self) -> None:
        """A request's handler runs (with its own deadlines): neither timed nor droppable here."""
        self._stop_timer()
        self.conns.idle.pop(self, None)

    def drop(self) -> None:
        transport = self.transport
        if transport is not None:
            self._forget()
            transport.abort()  # buffers go at once, whether the client reads or not

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _forget(self) -> None:
        self._stop_timer()
        self.conns.idle.pop(self, None)
        self.conns.open -= 1
        _Guard.by_transport.pop(id(self.transport), None)
        self.transport = None

    def data_received(self, data):
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()

    def connection_lost(self, exc):
        if self.transport is not None:
            self._forget()
        self.inner.connection_lost(exc)


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport):
        transport.close()


@web.middleware
async def mark_serving(request: web.Request, handler):
    """The guard's view of a request: serving while its handler runs, waiting for the next after."""
    guard = _Guard.of(request.transport)
    if guard:
        guard.serving()
    try:
        return await handler(request)
    finally:
        if guard:
            guard.waiting()


async def start_server(app: web.Application, host: str, port: int, max_connections: int = 256,
                       read_timeout: float = 10.0):
    """Serve ``app`` (built with ``mark_serving`` among its middlewares, as ``http.make_app`` does);
    returns (runner, asyncio server). Close with ``server.close(); await runner.cleanup()``."""
    runner = web.AppRunner(app, keepalive_timeout=read_timeout, access_log=None)
    await runner.setup()
    conns = Connections(max_connections, read_timeout)

    def factory():
        return _Guard(runner.server(), conns) if conns.make_room() else _Refuse()

    server = await asyncio.get_running_loop().create_server(factory, host, port)
    return runner, server
