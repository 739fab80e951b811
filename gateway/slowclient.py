"""Slow clients cannot hold the gateway: a request head must arrive in full within
`header_timeout` seconds of its first byte (or of the connection opening), and a request
body within `body_timeout` seconds of the end of its head; a client that trickles bytes
(slowloris) is disconnected when its time is up, while everyone else is served.

aiohttp has no header-read timeout of its own (its keep-alive timeout only covers idle
connections between requests), so the guard watches the raw bytes of each connection: it
finds the end of each head (a blank line), reads the body length from `Content-Length`
(or waits for the last chunk of a chunked body), and arms one timer per phase.
`GuardedAppRunner` is `web.AppRunner` with that guard on every connection, and `run_app`
serves an application with it the way `web.run_app` would.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web, web_protocol

log = logging.getLogger(__name__)

_HEAD_END = b"\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding:[^\r\n]*chunked", re.IGNORECASE | re.MULTILINE)
# A head longer than this is refused by aiohttp's own limits long before; the guard keeps
# no more of it than that.
_MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Seconds a client has to send a request head, and then its body."""

    header_timeout: float
    body_timeout: float


class _Guard(web_protocol.RequestHandler):
    """aiohttp's request handler, plus a deadline on each request's head and body."""

    limits: Limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._phase = "head"
        self._head = bytearray()
        self._body_left = 0  # bytes of a Content-Length body still to come
        self._chunked = False
        self._chunk_tail = b""
        self._timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        # A connection that opens and sends nothing is as slow as one that trickles.
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._track(memoryview(data))
        super().data_received(data)

    def _track(self, view: memoryview) -> None:
        while view:
            if self._phase == "idle":  # the first byte of the next request
                self._phase = "head"
                self._head.clear()
                self._arm(self.limits.header_timeout)
            if self._phase == "head":
                view = self._track_head(view)
            elif self._chunked:
                view = self._track_chunked(view)
            else:
                used = min(self._body_left, len(view))
                self._body_left -= used
                view = view[used:]
                if self._body_left == 0:
                    self._request_done()

    def _track_head(self, view: memoryview) -> memoryview:
        """Consumes head bytes; returns what follows the head in `view`, if it ended."""
        before = len(self._head)
        self._head += view[: max(0, _MAX_HEAD_BYTES - before)]
        end = self._head.find(_HEAD_END, max(0, before - 3))
        if end < 0:
            return view[len(view) :]
        head = bytes(self._head[: end + 4])
        rest = view[end + 4 - before :]
        self._chunked = _CHUNKED.search(head) is not None
        match = _CONTENT_LENGTH.search(head)
        self._body_left = int(match.group(1)) if match and not self._chunked else 0
        if self._chunked or self._body_left > 0:
            self._phase = "body"
            self._chunk_tail = b""
            self._arm(self.limits.body_timeout)
        else:
            self._request_done()
        return rest

    def _track_chunked(self, view: memoryview) -> memoryview:
        # The body ends with a zero-length chunk; the same bytes inside chunk data end the
        # phase early, which only relaxes the guard for that one request.
        window = self._chunk_tail + bytes(view)
        end = window.find(_LAST_CHUNK)
        if end < 0:
            self._chunk_tail = window[-(len(_LAST_CHUNK) - 1) :]
            return view[len(view) :]
        used = end + len(_LAST_CHUNK) - len(self._chunk_tail)
        self._request_done()
        return view[used:]

    def _request_done(self) -> None:
        self._phase = "idle"
        self._body_left = 0
        self._chunked = False
        self._disarm()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.info("slow client disconnected", extra={"phase": self._phase, "remote": str(peer)})
        self.force_close()
        if self.transport is not None:
            self.transport.close()


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections are guarded by :class:`Limits`."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # web.Server hard-codes its protocol class; a subclass differing only in that is
        # the narrowest way to put the guard on every connection it accepts.
        guard = type("GuardedRequestHandler", (_Guard,), {"limits": self.limits})
        server.__class__ = type("GuardedServer", (web.Server,), {"__call__": _factory(guard)})
        return server


def _factory(guard: type[_Guard]) -> Any:
    def make(server: web.Server) -> web_protocol.RequestHandler:
        return guard(server, loop=server._loop, **server._kwargs)

    return make


def run_app(
    app: web.Application,
    limits: Limits,
    *,
    host: str,
    port: int,
    loop: asyncio.AbstractEventLoop,
    shutdown_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    **handler_args: Any,
) -> None:
    """Serves `app` until SIGINT or SIGTERM, as `web.run_app` does, with guarded connections."""
    asyncio.set_event_loop(loop)
    runner = GuardedAppRunner(
        app, limits, handle_signals=True, shutdown_timeout=shutdown_timeout, **handler_args
    )

    async def serve() -> None:
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
        await site.start()
        await asyncio.Event().wait()  # until a signal raises GracefulExit

    try:
        loop.run_until_complete(serve())
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
