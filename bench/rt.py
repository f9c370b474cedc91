"""The real Request Tracker on loopback (shared/peers/rt/start-rt.sh, with the ticket custom
field IncidentKey), RT's own create latency measured straight through REST2, and the clean-up
of the tickets a scenario left open. An RT that was running before the benchmark is left
running; one the benchmark started is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.daemon import REPO
from bench.proc import Processes, Unavailable

KEY_FIELD = "IncidentKey"
SCRIPT_PLACES = (REPO / "shared/peers/rt", REPO.parent / "shared/peers/rt")


@dataclass(frozen=True)
class Rt:
    url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}


def _running(home: Path) -> bool:
    try:
        pid = int((home / "rt-server.pid").read_text())
    except (OSError, ValueError):
        return False
    try:
        return "rt-server" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


def start(processes: Processes) -> Rt:
    place = Path(os.environ["RT_START_SCRIPT"]).parent if "RT_START_SCRIPT" in os.environ else (
        next((p for p in SCRIPT_PLACES if (p / "start-rt.sh").is_file()), None))
    if place is None:
        raise Unavailable(f"no start-rt.sh in {', '.join(map(str, SCRIPT_PLACES))}")
    if os.geteuid() != 0:
        raise Unavailable("start-rt.sh installs Request Tracker with apt-get and needs root")
    home = Path(os.environ.get("RT_HOME") or Path(os.environ.get("TMPDIR", "/tmp"),
                                                  "probe-rt-peer"))
    was_running = _running(home)
    done = subprocess.run([str(place / "start-rt.sh")], env={**os.environ, "RT_CF": KEY_FIELD},
                          capture_output=True, text=True, timeout=600, check=False)
    if not was_running and _running(home):

        def stop() -> None:
            subprocess.run([str(place / "stop-rt.sh")], capture_output=True, check=False)

        processes.on_exit(stop)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise Unavailable(f"cannot start Request Tracker: {why}")
    env: dict[str, str] = {}
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return Rt(env["RT_URL"], env["RT_TOKEN"])


async def _creates(rt: Rt, count: int, tag: str) -> tuple[list[float], list[str]]:
    """`count` tickets created one after another, as probe's rt backend creates them."""
    latencies: list[float] = []
    refs: list[str] = []
    async with aiohttp.ClientSession(headers=rt.headers) as session:
        for n in range(count):
            body = {
                "Queue": "General", "Subject": f"[bench] RT create latency {tag} #{n}",
                "Content": "made by the probe benchmark; resolved right after",
                "ContentType": "text/plain", "Priority": 90,
                "CustomFields": {KEY_FIELD: f"bench-create/{tag}/{n}"},
            }
            started = time.monotonic()
            async with session.post(rt.url + "/REST/2.0/ticket", json=body) as response:
                created = await response.json(content_type=None)
                if response.status != 201:
                    raise RuntimeError(f"RT create: HTTP {response.status} {created}")
            latencies.append(time.monotonic() - started)
            refs.append(str(created["id"]))
    return latencies, refs


def create_latency(rt: Rt, count: int, tag: str) -> list[float]:
    """RT's own create latency, in seconds, for each of `count` creates (then resolved)."""
    latencies, refs = asyncio.run(_creates(rt, count, tag))
    resolve(rt, refs)
    return latencies


async def _resolve(rt: Rt, refs: list[str]) -> None:
    async with aiohttp.ClientSession(headers=rt.headers) as session:
        for ref in refs:
            async with session.put(f"{rt.url}/REST/2.0/ticket/{ref}",
                                   json={"Status": "resolved"}) as response:
                await response.read()


def resolve(rt: Rt, refs: list[str]) -> None:
    """Resolve tickets the benchmark made, so that RT does not fill up with open ones."""
    asyncio.run(_resolve(rt, refs))
