"""Targets for the fault-injection tests, run inside a network namespace the test made:
`python -m tests.harness.labserver PORT` serves HTTP on 127.0.0.1:PORT ("ok"), and on PORT+1
the same after a delay of DELAY seconds (a slow network, since this kernel has no netem
qdisc)."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def main(port: int, delay: float) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="ok")

    for handler, at in ((ok, port), (slow, port + 1)):
        app = web.Application()
        app.router.add_get("/health", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", at).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.3))
