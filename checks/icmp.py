"""The icmp check: a few echo requests, their loss, round-trip time and jitter.

It also owns the choice of socket. Raw ICMP sockets when the process may open them (root, or
CAP_NET_RAW); else the kernel's unprivileged ping sockets, which `net.ipv4.ping_group_range`
grants to groups; when neither is allowed the check cannot run at all, which is "unknown" and
never a failure of the target.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, ClassVar

from icmplib import (
    ICMPError,
    ICMPRequest,
    ICMPSocketError,
    ICMPv4Socket,
    ICMPv6Socket,
    SocketPermissionError,
)
from icmplib.utils import unique_identifier
from pydantic import field_validator

from checks.base import (
    Duration,
    IpFamily,
    Percent,
    Probe,
    Result,
    Spec,
    describe_os_error,
    format_duration,
    resolve,
)

PHASES = ("resolve", "setup", "rtt")

# An echo is only sent if it can still be given this long to come back before the timeout
# (half the timeout when that is shorter): when count * interval does not fit in the timeout,
# the check measures fewer echoes rather than report as lost the ones it never waited for.
_REPLY_WAIT = 1.0
# Stop listening this much before the timeout, so that what was measured is returned.
_MARGIN = 0.05
_ECHO_REPLY = {4: 0, 6: 129}


class IcmpSpec(Spec):
    kind: ClassVar[str] = "icmp"

    host: str
    count: int = 3
    interval: Duration = 0.2
    max_loss: Percent | None = None  # unset: the check fails only when every echo is lost
    max_rtt: Duration | None = None  # on the average round trip
    max_jitter: Duration | None = None
    payload_size: int = 56
    ip_family: IpFamily = "auto"

    @property
    def target(self) -> str:
        return self.host

    @field_validator("count")
    @classmethod
    def _count(cls, value: int) -> int:
        if not 1 <= value <= 100:
            raise ValueError(f"{value} is not between 1 and 100")
        return value

    @field_validator("payload_size")
    @classmethod
    def _payload(cls, value: int) -> int:
        if not 0 <= value <= 65000:
            raise ValueError(f"{value} is not between 0 and 65000 bytes")
        return value


async def run(spec: IcmpSpec, *, timeout: float) -> Result:
    probe = Probe(IcmpSpec.kind, spec.target, PHASES)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            with probe.phase("resolve"):
                try:
                    address = (await resolve(spec.host, spec.ip_family))[0]
                except OSError as err:
                    return probe.down(describe_os_error(err))
            probe.evidence["address"] = address

            with probe.phase("setup"):
                try:
                    privileged = _icmp_mode()
                    if privileged is None:
                        return probe.unknown(_not_permitted())
                    socket_class = ICMPv6Socket if ":" in address else ICMPv4Socket
                    sock = socket_class(privileged=privileged)
                except SocketPermissionError:
                    return probe.unknown(_not_permitted())
                except ICMPSocketError as err:
                    return probe.unknown(f"could not open an ICMP socket: {_describe(err)}")
            probe.evidence["privileged"] = privileged

            # The rtt phase holds the average round trip, not the time spent; this only names
            # the phase in a timeout reason.
            probe.current = "rtt"
            window = min(_REPLY_WAIT, timeout / 2)
            with sock:
                sock.blocking = False
                echoes = await _exchange(sock, address, spec, deadline - _MARGIN, window)
    except TimeoutError:
        return probe.timed_out(timeout)

    if echoes.failure is None and not echoes.settled() and echoes.waited < window:
        # Resolving took nearly all the time: the first echo never had a fair chance.
        return probe.timed_out(timeout)
    return _judge(probe, spec, echoes)


# --- the socket mode -----------------------------------------------------------------------

_privileged: bool | None = None  # decided by the first check that could open a socket


def _icmp_mode() -> bool | None:
    """True for raw sockets, False for ping sockets, None when neither may be opened.

    Decided by trying, not guessed from the uid: capabilities and the sysctl both count. Only
    a success is remembered, so that granting the permission needs no restart.
    """
    global _privileged
    if _privileged is None:
        for privileged in (True, False):
            try:
                ICMPv4Socket(privileged=privileged).close()
            except SocketPermissionError:
                continue
            _privileged = privileged
            break
    return _privileged


def _not_permitted() -> str:
    return (
        "ICMP not permitted: grant CAP_NET_RAW (AmbientCapabilities=CAP_NET_RAW) "
        f"or allow group {os.getegid()} in net.ipv4.ping_group_range"
    )


# --- the echoes ----------------------------------------------------------------------------


@dataclass
class _Echoes:
    ident: int = -1
    sent: dict[int, float] = field(default_factory=dict)  # sequence -> when it left
    rtts: dict[int, float] = field(default_factory=dict)  # sequence -> round trip
    errors: dict[int, str] = field(default_factory=dict)  # sequence -> ICMP error about it
    failure: str | None = None  # sending failed (no route, ...): no more echoes went out
    waited: float = 0.0  # how long the first echo was given to come back

    def settled(self) -> bool:
        return len(self.rtts) + len(self.errors) == len(self.sent)


async def _exchange(sock: Any, address: str, spec: IcmpSpec, end: float, window: float) -> _Echoes:
    """Send the echoes `interval` apart and collect the replies until all are in or `end`."""
    loop = asyncio.get_running_loop()
    echoes = _Echoes()
    settled = asyncio.Event()
    receiving = asyncio.create_task(_receive(sock, address, echoes, settled))
    first = loop.time()
    try:
        ident = unique_identifier()
        for sequence in range(spec.count):
            at = first + sequence * spec.interval
            if sequence and at + window > end:
                break
            await asyncio.sleep(at - loop.time())
            request = ICMPRequest(address, ident, sequence, payload_size=spec.payload_size)
            try:
                sock.send(request)
            except ICMPSocketError as err:
                echoes.failure = _describe(err)
                break
            echoes.sent[sequence] = time.perf_counter()
            echoes.ident = request.id  # a ping socket's kernel picks its own
        if not echoes.settled() and echoes.failure is None:
            settled.clear()
            try:
                async with asyncio.timeout_at(end):
                    await settled.wait()
            except TimeoutError:
                pass
    finally:
        receiving.cancel()
        await asyncio.wait([receiving])
        echoes.waited = loop.time() - first
    if not receiving.cancelled():
        receiving.result()  # a bug in the receiver surfaces here
    return echoes


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _recvfrom(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, Any]:
    """loop.sock_recvfrom, which uvloop does not implement: wait for the socket to be
    readable, then read it without blocking."""
    while True:
        try:
            return sock.recvfrom(4096)
        except (BlockingIOError, InterruptedError):
            pass
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _settle, readable)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())


async def _receive(sock: Any, address: str, echoes: _Echoes, settled: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    target = ipaddress.ip_address(address)
    while True:
        packet, source = await _recvfrom(loop, sock.sock)
        received = time.perf_counter()
        # icmplib's own receive() matches the id and sequence but never looks at the sender, so
        # a reply from another host (a raw socket sees every ICMP packet) would count: parse
        # here, where the sender is known.
        reply = sock._parse_reply(packet, source[0], received)
        if reply is None or reply.id != echoes.ident:
            continue
        sequence = reply.sequence
        if sequence not in echoes.sent or sequence in echoes.rtts or sequence in echoes.errors:
            continue
        try:
            reply.raise_for_status()
        except ICMPError as err:  # unreachable, TTL exceeded: said by a router, about our echo
            echoes.errors[sequence] = f"{_describe(err)} (from {source[0]})"
        else:
            if reply.type != _ECHO_REPLY[target.version]:
                continue  # our own request, looped back to a raw socket
            if ipaddress.ip_address(source[0].split("%")[0]) != target:
                continue
            echoes.rtts[sequence] = received - echoes.sent[sequence]
        if echoes.settled():
            settled.set()


def _judge(probe: Probe, spec: IcmpSpec, echoes: _Echoes) -> Result:
    rtts = [echoes.rtts[sequence] for sequence in sorted(echoes.rtts)]
    sent = len(echoes.sent)
    loss = 1 - len(rtts) / sent if sent else 1.0
    average = sum(rtts) / len(rtts) if rtts else 0.0
    # The mean difference between consecutive round trips, as icmplib and RFC 3550 have it.
    jitter = sum(abs(b - a) for a, b in pairwise(rtts)) / (len(rtts) - 1) if len(rtts) > 1 else 0.0
    probe.phases["rtt"] = average
    probe.evidence.update(
        sent=sent,
        received=len(rtts),
        loss=round(loss, 4),
        rtt_min=round(min(rtts, default=0.0), 6),
        rtt_avg=round(average, 6),
        rtt_max=round(max(rtts, default=0.0), 6),
        jitter=round(jitter, 6),
        icmp_errors=sorted(set(echoes.errors.values())),
    )
    if echoes.failure is not None:
        return probe.down(echoes.failure)
    if not rtts:
        said = f": {next(iter(echoes.errors.values()))}" if echoes.errors else ""
        return probe.down(f"100% packet loss ({sent} sent){said}")

    failures = []
    if spec.max_loss is not None and loss > spec.max_loss:
        failures.append(f"{_percent(loss)} packet loss (max {_percent(spec.max_loss)})")
    if spec.max_rtt is not None and average > spec.max_rtt:
        failures.append(
            f"average round trip {format_duration(average)} (max {format_duration(spec.max_rtt)})"
        )
    if spec.max_jitter is not None and jitter > spec.max_jitter:
        most = format_duration(spec.max_jitter)
        failures.append(f"jitter {format_duration(jitter)} (max {most})")
    return probe.down("; ".join(failures)) if failures else probe.up()


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 1):g}%"


def _describe(err: Exception) -> str:
    """icmplib wraps an OSError into a message with its errno; say what the OSError says."""
    cause = err.__context__
    if isinstance(cause, OSError):
        return describe_os_error(cause)
    text = str(err)
    return text[:1].lower() + text[1:]
