"""A proxy in front of Request Tracker that the test controls: it forwards, or drops a
request, holds RT's answer, or answers for RT (503, 429, slowly)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web


class Proxy:
    """Forwards to RT, unless told to drop a request, hold its answer, or answer for RT."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = 0
        self.mode = "forward"  # forward | drop | refuse503 | limit429 | slow
        self.hold: tuple[str, str] | None = None  # (method, path prefix) whose answer waits
        self.seen: list[tuple[str, str, int]] = []
        self.arrived = asyncio.Event()  # a held request reached RT
        self._session: aiohttp.ClientSession | None = None
        self._released = asyncio.Event()  # set at the end: held requests may go
        self._runner: web.AppRunner

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path_qs
        if self.mode == "drop" and request.method == "POST" and path.endswith("/ticket"):
            self.arrived.set()
            await self._released.wait()  # the client is killed while it waits
            return web.Response(status=503)
        if self.mode == "refuse503":
            self.seen.append((request.method, path, 503))
            return web.Response(status=503, text="<html><body>Service Unavailable</body></html>",
                                content_type="text/html")
        if self.mode == "slow":
            await asyncio.sleep(1.0)  # past the route's timeout: RT still does the work
        if self.mode == "limit429":
            self.seen.append((request.method, path, 429))
            return web.json_response({"message": "slow down"}, status=429,
                                     headers={"Retry-After": "1"})
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + path, data=body or None,
            headers={k: v for k, v in request.headers.items()
                     if k.lower() in ("authorization", "content-type")},
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
        self.seen.append((request.method, path, status))
        if self.hold and request.method == self.hold[0] and request.path.startswith(
            self.hold[1]
        ):
            self.arrived.set()
            await self._released.wait()  # RT did it; the client never hears
        return web.Response(status=status, body=payload, content_type="application/json")

    async def start(self, port: int = 0) -> None:
        """Listen (again) on `port`, or a free one the first time."""
        self._released.clear()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close the port: connections to it are refused."""
        self._released.set()
        await self._runner.cleanup()

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        assert self._session is not None
        await self._session.close()
