"""The check kinds, one module each, and the one map that dispatches to them.

Adding a kind is one module (a `Spec` model and `async def run(spec, *, timeout) -> Result`)
and one line in `KINDS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from checks import dns, http, icmp, tcp, tls
from checks.base import Result, Spec, State, format_duration

log = logging.getLogger("probe.checks")


@dataclass(frozen=True, slots=True)
class Kind:
    spec: type[Spec]
    run: Callable[..., Awaitable[Result]]
    phases: tuple[str, ...]


KINDS: dict[str, Kind] = {
    "http": Kind(http.HttpSpec, http.run, http.PHASES),
    "tcp": Kind(tcp.TcpSpec, tcp.run, tcp.PHASES),
    "dns": Kind(dns.DnsSpec, dns.run, dns.PHASES),
    "tls": Kind(tls.TlsSpec, tls.run, tls.PHASES),
    "icmp": Kind(icmp.IcmpSpec, icmp.run, icmp.PHASES),
}

# A kind enforces its own timeout and names the phase it was in; this outer bound only catches
# a kind that fails to (a bug), so that one hanging target never holds a worker for good.
_OUTER_GRACE = 1.0


async def execute(spec: Spec, *, timeout: float) -> Result:
    """Run one check; whatever happens, return a Result and never raise."""
    started = time.time()
    t0 = time.perf_counter()
    kind: Any = KINDS[spec.kind]
    state: State
    try:
        async with asyncio.timeout(timeout + _OUTER_GRACE):
            result: Result = await kind.run(spec, timeout=timeout)
            return result
    except TimeoutError:
        state, reason = "down", f"timed out after {format_duration(timeout)}"
    except Exception as err:  # a bug in a check must not take the daemon down
        log.exception("check of %s crashed", spec.target)
        state, reason = "unknown", f"the check itself failed: {type(err).__name__}: {err}"
    return Result(
        kind=spec.kind,
        target=spec.target,
        state=state,
        duration=time.perf_counter() - t0,
        reason=reason,
        phases=dict.fromkeys(KINDS[spec.kind].phases, 0.0),
        started_at=started,
    )
