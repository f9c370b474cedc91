"""What a check kind is: the `Result` it returns, the `PhaseTimer` that times its phases and
builds that Result, the base of its `Spec`, and the `Kind` record (with the `Gauge`s it adds to
/metrics) that declares it to the rest of probe.

A check kind is one module with a `Spec` model, `async def run(spec, *, timeout) -> Result`,
the gauges its results add to /metrics and the host and port triage looks at, declared in one
`Kind`. It never raises for a sick target: a target that is down gives `timer.down(...)`, and a
check that could not run at all (no permission for ICMP, no file descriptors left, say) gives
`timer.unknown(...)`, which must never count as a failure of the target.

The value types specs are written in live in `checks.values`; name resolution and the
connection steps the kinds share in `checks.net`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

from checks.values import StrictModel, format_duration

State = Literal["up", "down", "unknown"]
Evidence = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    """One run of one check: what was seen, how long each phase took, and why it failed."""

    kind: str
    target: str
    state: State
    duration: float
    reason: str = ""
    phases: Mapping[str, float] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "up"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "ok": self.ok,
            "duration_seconds": round(self.duration, 6),
            "reason": self.reason,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "evidence": dict(self.evidence),
            "started_at": self.started_at,
        }


class PhaseTimer:
    """Times the phases of one check run and builds its Result.

    `with timer.phase("connect"): ...` adds the time spent to that phase; the phase being timed
    when a timeout strikes is named in the reason ("timed out after 5s during connect").
    """

    def __init__(self, kind: str, target: str, phases: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.target = target
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self.phases: dict[str, float] = dict.fromkeys(phases, 0.0)
        self.evidence: dict[str, Any] = {}
        self.current: str | None = None

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def _result(self, state: State, reason: str) -> Result:
        return Result(
            kind=self.kind,
            target=self.target,
            state=state,
            duration=self.elapsed(),
            reason=reason,
            phases=self.phases,
            evidence=self.evidence,
            started_at=self.started_at,
        )

    def up(self) -> Result:
        return self._result("up", "")

    def down(self, reason: str) -> Result:
        return self._result("down", reason)

    def unknown(self, reason: str) -> Result:
        return self._result("unknown", reason)

    def timed_out(self, timeout: float) -> Result:
        during = f" during {self.current}" if self.current else ""
        return self.down(f"timed out after {format_duration(timeout)}{during}")

    def too_slow(self, max_latency: float | None) -> Result | None:
        """A down Result when the run so far took longer than `max_latency`, else None."""
        took = self.elapsed()
        if max_latency is not None and took > max_latency:
            return self.down(f"took {format_duration(took)} (max {format_duration(max_latency)})")
        return None


class _Phase:
    __slots__ = ("_name", "_t0", "_timer")

    def __init__(self, timer: PhaseTimer, name: str) -> None:
        self._timer = timer
        self._name = name
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._timer.current = self._name
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        spent = time.perf_counter() - self._t0
        self._timer.phases[self._name] = self._timer.phases.get(self._name, 0.0) + spent
        # A phase left by an exception (the timeout's cancellation) stays current, so that
        # timed_out() can name it.
        if exc[0] is None:
            self._timer.current = None


class Spec(StrictModel):
    """The base of every check kind's settings."""

    kind: ClassVar[str]

    @property
    def target(self) -> str:
        raise NotImplementedError


# --- what a kind declares ------------------------------------------------------------------

S = TypeVar("S", bound=Spec)

# The house rules for a metric name (STYLE.md, 7): probe_ prefix, base units.
_PHASE_METRIC = re.compile(r"probe_[a-z0-9_]+_seconds")


class Gauge(NamedTuple):
    """One sample a result adds to /metrics. probe.metrics labels it with the check's `check`,
    `kind` and `service`, then `labels`; samples of one name form one family, in the order the
    kind yields them.

    A NamedTuple rather than a frozen dataclass: a scrape of 10,000 checks makes some 20,000 of
    them, and a frozen dataclass takes 0.9µs to build to a NamedTuple's 0.4µs."""

    name: str
    help: str
    value: float
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Kind(Generic[S]):
    """A check kind as the rest of probe sees it: the configuration takes `spec`, the scheduler
    calls `run`, /metrics shows each of `phases` in `phase_metric` and whatever `gauges` makes
    of a result, and a new ticket's triage looks at the host and port `endpoint` names (None
    where the kind has none). Each field is required, so that a kind that leaves one out fails
    when its module is imported, not at the first scrape."""

    spec: type[S]
    run: Callable[..., Awaitable[Result]]  # (spec, *, timeout) -> Result
    phases: tuple[str, ...]
    phase_metric: str
    gauges: Callable[[Result], Iterable[Gauge]]
    endpoint: Callable[[S], tuple[str | None, int | None]]

    def __post_init__(self) -> None:
        if not _PHASE_METRIC.fullmatch(self.phase_metric):
            raise ValueError(f"{self.spec.kind}: phase_metric {self.phase_metric!r} is not "
                             "a metric name like probe_<kind>_duration_seconds")
        if not (callable(self.run) and callable(self.gauges) and callable(self.endpoint)):
            raise TypeError(f"{self.spec.kind}: run, gauges and endpoint must be functions")
