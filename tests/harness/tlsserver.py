"""Peers for the tcp and tls checks: small asyncio servers on 127.0.0.1 that hold the line,
greet with a banner, answer a request, stay silent, or serve a certificate."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say nothing; hang up when the client does (a port that is open, or a silent one)."""
    await reader.read()


def greet(banner: bytes, *, delay: float = 0.0) -> Handler:
    """Send `banner` (after `delay` seconds), then wait for the client to hang up."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        writer.write(banner)
        await writer.drain()
        await reader.read()

    return handler


def answer(request: bytes, reply: bytes) -> Handler:
    """Wait for `request`, reply with `reply`, and hang up."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readexactly(len(request)) == request:
            writer.write(reply)
            await writer.drain()

    return handler


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close the connection at once, having said nothing."""


@asynccontextmanager
async def serve(
    handler: Handler = hold, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A server on 127.0.0.1 for the duration of the block; yields its port. On the way out it
    lets each connection see the client hang up, and cuts those that linger."""
    connections: set[asyncio.Task[None]] = set()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            # The checks hang up when they have seen enough; a peer must not mind.
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await handler(reader, writer)
        finally:
            writer.close()
            connections.discard(task)

    server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if connections:
            _, lingering = await asyncio.wait(set(connections), timeout=1)
            for task in lingering:
                task.cancel()
            await asyncio.gather(*lingering, return_exceptions=True)
        await server.wait_closed()
