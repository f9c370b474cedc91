"""The check kinds, one module each, and the one map that dispatches to them.

Adding a kind is one module and one line in `KINDS`. The module has a `Spec` model,
`async def run(spec, *, timeout) -> Result`, and a `KIND` (`checks.base.Kind`) that also says
what its results add to /metrics (its phase metric, and the gauges it makes of a result) and
which host and port a new ticket's triage looks at. The configuration, the scheduler, /metrics
and triage all read this map: nothing else names a kind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from checks import dns, http, icmp, tcp, tls
from checks.base import Gauge as Gauge
from checks.base import Kind as Kind
from checks.base import Result, Spec, State
from checks.values import format_duration

log = logging.getLogger("probe.checks")

KINDS: dict[str, Kind[Any]] = {
    "http": http.KIND,
    "tcp": tcp.KIND,
    "dns": dns.KIND,
    "tls": tls.KIND,
    "icmp": icmp.KIND,
}

# A kind enforces its own timeout and names the phase it was in; this outer bound only catches
# a kind that fails to (a bug), so that one hanging target never holds a worker for good.
_OUTER_GRACE = 1.0


async def execute(spec: Spec, *, timeout: float) -> Result:
    """Run one check; whatever happens, return a Result and never raise."""
    started = time.time()
    t0 = time.perf_counter()
    kind = KINDS[spec.kind]
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
        phases=dict.fromkeys(kind.phases, 0.0),
        started_at=started,
    )
