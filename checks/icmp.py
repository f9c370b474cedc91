"""The icmp check: a few echo requests, their loss, round-trip time and jitter.

It also owns the choice of socket. Raw ICMP sockets when the process may open them (root, or
CAP_NET_RAW); else the kernel's unprivileged ping sockets, which `net.ipv4.ping_group_range`
grants to groups; when neither is allowed the check cannot run at all, which is "unknown" and
never a failure of the target. The checks of an event loop share their sockets (`_Pinger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import os
import secrets
import socket
import struct
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import ClassVar

from icmplib import ICMPError, ICMPReply
from pydantic import field_validator

from checks.base import Gauge, Kind, PhaseTimer, Result, Spec
from checks.net import IpFamily, describe_os_error, is_address, resolve
from checks.values import Duration, Percent, format_duration

PHASES = ("resolve", "setup", "rtt")

# An echo is only sent if it can still be given this long to come back before the timeout
# (half the timeout when that is shorter): when count * interval does not fit in the timeout,
# the check measures fewer echoes rather than report as lost the ones it never waited for.
_REPLY_WAIT = 1.0
# Stop listening this much before the timeout, so that what was measured is returned.
_MARGIN = 0.05


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
    timer = PhaseTimer(IcmpSpec.kind, spec.target, PHASES)
    deadline = asyncio.get_running_loop().time() + timeout
    # Only a name lookup needs a timeout: the echoes keep to the deadline by themselves (see
    # _exchange), and a timeout is a tenth of the CPU of a check of loopback.
    bound: contextlib.AbstractAsyncContextManager[object] = (
        contextlib.nullcontext() if is_address(spec.host) else asyncio.timeout_at(deadline)
    )
    try:
        with timer.phase("resolve"):
            async with bound:
                address = (await resolve(spec.host, spec.ip_family))[0]
    except TimeoutError:
        return timer.timed_out(timeout)
    except OSError as err:
        return timer.down(describe_os_error(err))
    timer.evidence["address"] = address

    with timer.phase("setup"):
        try:
            privileged = _icmp_mode()
            if privileged is None:
                return timer.unknown(_not_permitted())
            pinger = _pinger(socket.AF_INET6 if ":" in address else socket.AF_INET, privileged)
        except PermissionError:
            return timer.unknown(_not_permitted())
        except OSError as err:
            return timer.unknown(f"could not open an ICMP socket: {describe_os_error(err)}")
    timer.evidence["privileged"] = privileged

    # The rtt phase holds the average round trip, not the time spent; this only names the
    # phase in a timeout reason.
    timer.current = "rtt"
    window = min(_REPLY_WAIT, timeout / 2)
    echoes = await _exchange(pinger, address, spec, deadline - _MARGIN, window)
    if echoes.failure is None and not echoes.settled() and echoes.waited < window:
        # Resolving took nearly all the time: the first echo never had a fair chance.
        return timer.timed_out(timeout)
    return _judge(timer, spec, echoes)


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
            kind = socket.SOCK_RAW if privileged else socket.SOCK_DGRAM
            try:
                socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP).close()
            except PermissionError:
                continue
            _privileged = privileged
            break
    return _privileged


def _not_permitted() -> str:
    return (
        "ICMP not permitted: grant CAP_NET_RAW (AmbientCapabilities=CAP_NET_RAW) "
        f"or allow group {os.getegid()} in net.ipv4.ping_group_range"
    )


# --- the shared sockets --------------------------------------------------------------------

_ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
_ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
# A raw socket is handed every ICMP packet of the host. The kernel drops for it all but echo
# replies and the errors that quote an echo back (IPv4 unreachable, source quench, redirect,
# time exceeded, parameter problem; every ICMPv6 type below 128): a set bit blocks its type.
_ICMP_FILTER = ~(1 << 0 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 11 | 1 << 12) & 0xFFFFFFFF
_ICMP6_FILTER = (0, 0, 0, 0, 0xFFFFFFFF & ~(1 << 129 - 128), 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
_SOL_RAW, _SO_ICMP_FILTER, _SO_ICMP6_FILTER = 255, 1, 1  # linux/icmp.h, linux/icmpv6.h
_SO_ATTACH_FILTER, _SO_RCVBUFFORCE = 26, 33  # asm-generic/socket.h
# The socket itself is gone (closed beneath us): any other error on sending is about the
# destination (no route, a firewall, ...), and the socket serves the other checks on.
_BROKEN = (errno.EBADF, errno.ENOTSOCK)
# Replies wait in the receive buffer until the loop gets to read them, a burst of them when
# many checks start at once: ask for room for thousands (SO_RCVBUFFORCE needs CAP_NET_ADMIN,
# SO_RCVBUF is capped by net.core.rmem_max), and give a socket no more checks than its buffer
# holds replies for, counting what a reply may take there from a real network interface.
_RCVBUF, _REPLY_TRUESIZE = 8 << 20, 2048
# ... nor more than 655, so that their echoes (100 at most each) never wrap the 16-bit
# sequence numbers.
_MOST_CHECKS = 0xFFFF // 100


class _Pinger:
    """An ICMP socket of one family and mode, shared by the checks of an event loop.

    A socket per check would cost its own syscalls, and as raw sockets each see every ICMP
    packet of the host, N checks at once would wake N times per packet. Echoes are told apart
    by their sequence number: a raw socket's identifier is random, a ping socket's is the
    kernel's (which hands it only the replies with it).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, family: socket.AddressFamily, privileged: bool
    ) -> None:
        kind = socket.SOCK_RAW if privileged else socket.SOCK_DGRAM
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        self.sock = socket.socket(family, kind, proto)
        try:
            self.sock.setblocking(False)
            if privileged:
                self.ident = secrets.randbits(16)
                if family == socket.AF_INET:
                    self.sock.setsockopt(_SOL_RAW, _SO_ICMP_FILTER, struct.pack("I", _ICMP_FILTER))
                else:
                    filters = struct.pack("8I", *_ICMP6_FILTER)
                    self.sock.setsockopt(socket.IPPROTO_ICMPV6, _SO_ICMP6_FILTER, filters)
                _attach_filter(self.sock, self.ident, _ECHO_REPLY[family])
            else:
                self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                self.ident = self.sock.getsockname()[1]
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            self.sock.close()
            raise
        self.room = min(rcvbuf // _REPLY_TRUESIZE, _MOST_CHECKS)
        self.users = 0  # the checks that hold it
        self.loop = loop
        self.key = (family, privileged)
        self.version = 4 if family == socket.AF_INET else 6
        # Only an IPv4 raw socket is handed the IP header; an IPv6 one never is.
        self.ip_header = privileged and family == socket.AF_INET
        self.request = _ECHO_REQUEST[family]
        self.reply = _ECHO_REPLY[family]
        self.pending: dict[int, tuple[_Echoes, int]] = {}  # sequence -> the echo it is
        self.sequence = 0
        self.buffer = bytearray(1024)  # headers are all we read: a longer packet is cut
        loop.add_reader(self.sock.fileno(), self._read)
        # The loop may be dropped (tests make one each) with no word to us: close with it.
        self._finalizer = weakref.finalize(loop, self.sock.close)

    def send(self, echoes: _Echoes, index: int, payload_size: int) -> None:
        """Send echo `index` of a check; raises OSError when it cannot go out."""
        sequence = self.sequence
        while sequence in self.pending:
            sequence = (sequence + 1) & 0xFFFF
        self.sequence = (sequence + 1) & 0xFFFF
        # The payload is zeros, so the checksum (which the kernel computes itself for all but
        # an IPv4 raw socket) is the header's alone.
        total = (self.request << 8) + self.ident + sequence
        checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
        header = struct.pack("!BBHHH", self.request, 0, checksum, self.ident, sequence)
        try:
            self.sock.sendto(header + bytes(payload_size), (echoes.address, 0))
        except OSError as err:
            if err.errno in _BROKEN:
                self.close()
            raise
        echoes.sent[index] = time.perf_counter()
        echoes.wire.append(sequence)
        self.pending[sequence] = (echoes, index)

    def release(self, echoes: _Echoes) -> None:
        """The check is done with the socket, whose late replies to it are now ignored."""
        for sequence in echoes.wire:
            if self.pending.get(sequence, (None,))[0] is echoes:
                del self.pending[sequence]
        self.users -= 1
        pool = self._pool()
        if not self.users and pool and pool[0] is not self:
            self.close()  # a burst is over: the first socket of the pool is enough again

    def close(self) -> None:
        """Put the socket out of use: the next check opens a fresh one."""
        pool = self._pool()
        if self in pool:
            pool.remove(self)
        if self._finalizer.alive and not self.loop.is_closed():
            self.loop.remove_reader(self.sock.fileno())
        self._finalizer()

    def _pool(self) -> list[_Pinger]:
        return _pingers.get(self.loop, {}).get(self.key, [])

    def _read(self) -> None:
        while True:
            try:
                size, source = self.sock.recvfrom_into(self.buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            self._take(size, source[0], time.perf_counter())

    def _take(self, size: int, source: str, received: float) -> None:
        packet = self.buffer
        start = (packet[0] & 0x0F) * 4 if self.ip_header else 0
        if size < start + 8:
            return
        kind = packet[start]
        if kind == self.reply:
            ident, sequence = struct.unpack_from("!HH", packet, start + 4)
        elif kind != self.request:
            # An ICMP error quotes the IP header and the first 8 bytes of what it is about.
            quoted = start + 8
            if size < quoted + 1:
                return
            echo = quoted + ((packet[quoted] & 0x0F) * 4 if self.version == 4 else 40)
            if size < echo + 8 or packet[echo] != self.request:
                return
            ident, sequence = struct.unpack_from("!HH", packet, echo + 4)
        else:
            return  # our own request, looped back to a raw socket
        if ident != self.ident or sequence not in self.pending:
            return
        echoes, index = self.pending[sequence]
        if kind == self.reply:
            # A raw socket sees every host's replies: one from another host does not count.
            if source != echoes.address and not _same_host(source, echoes.address):
                return
            echoes.rtts[index] = received - echoes.sent[index]
        else:  # unreachable, TTL exceeded: said by a router, about our echo
            said = _icmp_error(self.version, kind, packet[start + 1])
            echoes.errors[index] = f"{said} (from {source})"
        del self.pending[sequence]
        if echoes.waiter is not None and echoes.settled():
            _settle(echoes.waiter)


_Pools = dict[tuple[socket.AddressFamily, bool], list[_Pinger]]  # by family and mode
_pingers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pools]
_pingers = weakref.WeakKeyDictionary()


def _pinger(family: socket.AddressFamily, privileged: bool) -> _Pinger:
    """A shared socket of this loop, family and mode with room for one more check, opened on
    first use (another joins the first for a burst of checks); the check gives it back with
    `release`.

    Per loop, because its reader is registered with one. A socket belongs to the network
    namespace it was opened in; a loop runs in one thread, which keeps its namespace.
    """
    loop = asyncio.get_running_loop()
    pools = _pingers.get(loop)
    if pools is None:
        pools = _pingers[loop] = {}
    pool = pools.setdefault((family, privileged), [])
    for pinger in pool:
        if pinger.users < pinger.room:
            break
    else:
        pinger = _Pinger(loop, family, privileged)
        pool.append(pinger)
    pinger.users += 1
    return pinger


def _attach_filter(sock: socket.socket, ident: int, reply: int) -> None:
    """Have the kernel drop the echo replies to other sockets, as ping(8) does: a raw socket is
    handed them all, which would wake us (and fill our buffer) for every ping on the host."""
    code = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): past the IP header
        (0x50, 0, 0, 0),  # ldb [x+0]: the type
        (0x15, 0, 2, reply),  # an echo reply? else accept
        (0x48, 0, 0, 4),  # ldh [x+4]: the identifier
        (0x15, 0, 1, ident),  # ours? accept, else drop
        (0x06, 0, 0, 0xFFFFFFFF),
        (0x06, 0, 0, 0),
    ]
    if sock.family == socket.AF_INET6:
        code = code[1:]  # handed no IP header: x stays 0
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in code))
    fprog = struct.pack("HL", len(code), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def _same_host(source: str, address: str) -> bool:
    """The addresses compared as addresses (`::ffff:7f00:1` is `::ffff:127.0.0.1`), their
    IPv6 scopes left out: a link-local reply comes back without one."""
    return ipaddress.ip_address(source.split("%")[0]) == ipaddress.ip_address(address.split("%")[0])


def _icmp_error(version: int, kind: int, code: int) -> str:
    """What an ICMP error says, in icmplib's words (its tables know every type and code)."""
    reply = ICMPReply(None, version, 0, 0, kind, code, 0, 0.0)
    try:
        reply.raise_for_status()
    except ICMPError as err:
        return _describe(err)
    raise AssertionError(f"ICMP type {kind} is not an error")


# --- the echoes ----------------------------------------------------------------------------


@dataclass
class _Echoes:
    address: str
    sent: dict[int, float] = field(default_factory=dict)  # index -> when it left
    rtts: dict[int, float] = field(default_factory=dict)  # index -> round trip
    errors: dict[int, str] = field(default_factory=dict)  # index -> ICMP error about it
    failure: str | None = None  # sending failed (no route, ...): no more echoes went out
    ours: bool = False  # the failure was our socket's, not the target's
    waited: float = 0.0  # how long the first echo was given to come back
    wire: list[int] = field(default_factory=list)  # the sequence numbers they went out with
    waiter: asyncio.Future[None] | None = None  # done when every echo sent is settled

    def settled(self) -> bool:
        return len(self.rtts) + len(self.errors) == len(self.sent)


async def _exchange(
    pinger: _Pinger, address: str, spec: IcmpSpec, end: float, window: float
) -> _Echoes:
    """Send the echoes `interval` apart and collect the replies until all are in or `end`."""
    loop = asyncio.get_running_loop()
    echoes = _Echoes(address)
    first = loop.time()
    try:
        for index in range(spec.count):
            if index:
                at = first + index * spec.interval
                if at + window > end:
                    break
                await asyncio.sleep(at - loop.time())
            try:
                pinger.send(echoes, index, spec.payload_size)
            except OSError as err:
                echoes.failure = describe_os_error(err)
                # Our own socket gone, not the target: the check could not run.
                echoes.ours = err.errno in _BROKEN
                break
        if not echoes.settled() and echoes.failure is None:
            echoes.waiter = loop.create_future()
            timer = loop.call_at(end, _settle, echoes.waiter)
            try:
                await echoes.waiter
            finally:
                timer.cancel()
    finally:
        pinger.release(echoes)
        echoes.waited = loop.time() - first
    return echoes


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _judge(timer: PhaseTimer, spec: IcmpSpec, echoes: _Echoes) -> Result:
    rtts = [echoes.rtts[sequence] for sequence in sorted(echoes.rtts)]
    sent = len(echoes.sent)
    loss = 1 - len(rtts) / sent if sent else 1.0
    average = sum(rtts) / len(rtts) if rtts else 0.0
    # The mean difference between consecutive round trips, as icmplib and RFC 3550 have it.
    jitter = sum(abs(b - a) for a, b in pairwise(rtts)) / (len(rtts) - 1) if len(rtts) > 1 else 0.0
    timer.phases["rtt"] = average
    timer.evidence.update(
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
        if echoes.ours:
            return timer.unknown(f"the ICMP socket broke ({echoes.failure}): a new one is opened")
        return timer.down(echoes.failure)
    if not rtts:
        said = f": {next(iter(echoes.errors.values()))}" if echoes.errors else ""
        return timer.down(f"100% packet loss ({sent} sent){said}")

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
    return timer.down("; ".join(failures)) if failures else timer.up()


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 1):g}%"


def _describe(err: Exception) -> str:
    """icmplib wraps an OSError into a message with its errno; say what the OSError says."""
    cause = err.__context__
    if isinstance(cause, OSError):
        return describe_os_error(cause)
    text = str(err)
    return text[:1].lower() + text[1:]


# --- what /metrics and a ticket's triage see -----------------------------------------------

def gauges(result: Result) -> Iterator[Gauge]:
    ev = result.evidence
    if "loss" in ev:
        yield Gauge("probe_icmp_packet_loss_ratio", "Share of echo requests lost", ev["loss"])
    if ev.get("jitter") is not None:
        yield Gauge("probe_icmp_jitter_seconds", "Jitter of the round trips", ev["jitter"])


def endpoint(spec: IcmpSpec) -> tuple[str | None, int | None]:
    return spec.host, None


KIND = Kind(spec=IcmpSpec, run=run, phases=PHASES,
            phase_metric="probe_icmp_duration_seconds", gauges=gauges, endpoint=endpoint)
