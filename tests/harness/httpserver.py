"""HTTP peers for the tests, on loopback only: an aiohttp application served on a free port, and
raw TCP servers that misbehave on purpose (never answer, answer with garbage)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serves `app` on `host` and yields the port it listens on."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0, ssl_context=ssl_context).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_raw(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Serves `handler` for each connection on `host` and yields the port it listens on."""
    handling: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handling.add(task)
        try:
            await handler(reader, writer)
        finally:
            handling.discard(task)
            writer.close()

    server = await asyncio.start_server(tracked, host, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        # Connections still open at the end would outlive the test's event loop.
        for task in list(handling):
            task.cancel()
        await asyncio.gather(*handling, return_exceptions=True)
        await asyncio.sleep(0)  # lets the closed transports release their sockets


def replying(raw: bytes) -> Handler:
    """A peer that reads the request head, sends `raw` as it is, and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(raw)
            await writer.drain()

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A peer that accepts and never answers, until the client goes away."""
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass

