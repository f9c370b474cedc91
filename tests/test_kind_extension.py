"""A check kind is one module and one line in `checks.KINDS`: a small kind declared here and
registered for the length of a test runs, shows its own series on /metrics and has its host
and port looked at by a new ticket's triage, with no edit anywhere else. And every kind in the
registry declares what /metrics and triage need, so that one that does not fails when it is
declared, not at the first scrape."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry

from checks import KINDS, execute
from checks.base import Gauge, Kind, PhaseTimer, Result, Spec
from probe.config import Check, Flapping, TicketPolicy
from probe.metrics import Metrics, View, exposition
from probe.tickets import triage
from tests.harness.tlsserver import serve

# --- the kind: knocks on a door (a TCP port), and hears who answers -----------------------


class DoorSpec(Spec):
    kind: ClassVar[str] = "door"

    host: str
    port: int

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


PHASES = ("walk", "knock")


async def knock(spec: DoorSpec, *, timeout: float) -> Result:
    timer = PhaseTimer(DoorSpec.kind, spec.target, PHASES)
    with timer.phase("knock"):
        _, writer = await asyncio.open_connection(spec.host, spec.port)
    writer.close()
    await writer.wait_closed()
    timer.evidence.update(knocks=3, answer="come in")
    return timer.up()


def door_gauges(result: Result) -> Iterator[Gauge]:
    yield Gauge("probe_door_knocks", "Knocks before the door opened",
                result.evidence.get("knocks", 0))
    if "answer" in result.evidence:
        yield Gauge("probe_door_answer_info", "What was said behind the door", 1,
                    {"answer": result.evidence["answer"]})


def door_endpoint(spec: DoorSpec) -> tuple[str | None, int | None]:
    return spec.host, spec.port


DOOR = Kind(spec=DoorSpec, run=knock, phases=PHASES, phase_metric="probe_door_duration_seconds",
            gauges=door_gauges, endpoint=door_endpoint)

# --------------------------------------------------------------------------------------------

LABELS = 'check="front",kind="door",service="house"'


@pytest.fixture
def door(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one line a new kind adds to the registry, for the length of the test."""
    monkeypatch.setitem(KINDS, "door", DOOR)


def check_of(spec: Spec) -> Check:
    # The configuration's schema is built from KINDS when probe.config is imported, so a kind
    # registered later is given its Check directly, as the configuration would build it.
    return Check(
        name="front", kind=spec.kind, spec=spec, service="house", depends_on=(), interval=10.0,
        retry_interval=10.0, timeout=2.0, failure_threshold=3, success_threshold=2,
        flapping=Flapping(), ticket=TicketPolicy(), description="", runbook=None, dashboard=None,
    )


async def scrape(spec: DoorSpec) -> str:
    """/metrics after one run of the check, from the objects the daemon serves it with."""
    result = await execute(spec, timeout=2.0)
    assert result.state == "up", result.reason
    check = check_of(spec)
    metrics = Metrics(CollectorRegistry(), lambda: View({"front": check}, {"front": result}))
    return b"".join(await exposition(metrics)).decode()


@pytest.mark.usefixtures("door")
async def test_a_registered_kind_shows_its_phases_and_its_gauges_on_metrics() -> None:
    async with serve() as port:
        text = await scrape(DoorSpec(host="127.0.0.1", port=port))
    assert "# HELP probe_door_duration_seconds Duration of the door check by phase\n" in text
    assert "# TYPE probe_door_duration_seconds gauge\n" in text
    assert f'probe_door_duration_seconds{{{LABELS},phase="walk"}} 0.0\n' in text
    assert f'probe_door_duration_seconds{{{LABELS},phase="knock"}} ' in text
    assert "# HELP probe_door_knocks Knocks before the door opened\n" in text
    assert f"probe_door_knocks{{{LABELS}}} 3.0\n" in text
    assert f'probe_door_answer_info{{{LABELS},answer="come in"}} 1.0\n' in text
    # and the series every kind has
    assert f"probe_success{{{LABELS}}} 1.0\n" in text


@pytest.mark.usefixtures("door")
async def test_a_registered_kinds_series_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    async with serve() as port:
        text = await scrape(DoorSpec(host="127.0.0.1", port=port))
    lint = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True,
        text=True, timeout=30,
    )
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


@pytest.mark.usefixtures("door")
async def test_a_registered_kind_has_its_host_and_port_triaged() -> None:
    async with serve() as port:
        check = check_of(DoorSpec(host="127.0.0.1", port=port))
        lines = dict(await triage.gather([check], deadline=2.0))
    assert list(lines) == ["DNS 127.0.0.1", "TCP 127.0.0.1", "ICMP 127.0.0.1", "Route 127.0.0.1"]
    assert lines["DNS 127.0.0.1"] == "an address, not a name: nothing to resolve"
    assert lines["TCP 127.0.0.1"].startswith(f"{port} open (")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_in_the_registry_declares_its_metrics_and_its_triage(name: str) -> None:
    kind = KINDS[name]
    assert kind.spec.kind == name
    assert kind.phase_metric == f"probe_{name}_duration_seconds"
    assert callable(kind.endpoint)
    # What execute() gives for a check that crashed: no evidence, every phase at 0.
    crashed = Result(kind=name, target="t", state="unknown", duration=0.0,
                     phases=dict.fromkeys(kind.phases, 0.0))
    for gauge in kind.gauges(crashed):
        assert isinstance(gauge, Gauge)
        assert gauge.name.startswith("probe_") and gauge.help


def test_a_kind_without_its_metrics_is_refused_when_it_is_declared() -> None:
    with pytest.raises(TypeError, match="phase_metric"):
        Kind(spec=DoorSpec, run=knock, phases=PHASES,  # type: ignore[call-arg]
             gauges=door_gauges, endpoint=door_endpoint)
    with pytest.raises(ValueError, match="'door duration' is not a metric name"):
        Kind(spec=DoorSpec, run=knock, phases=PHASES, phase_metric="door duration",
             gauges=door_gauges, endpoint=door_endpoint)
