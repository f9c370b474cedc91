"""The icmp check, against loopback and against peers in network namespaces the tests create.

A namespace (`ip netns add`, root only; those tests skip elsewhere) gives a loopback of our own
whose sysctls we may set: the kernel's echo replies switched off, a ping group range, lo down.
In it a raw-socket responder answers echoes as a test asks (some, late, from another address,
or with "host unreachable"), and the check runs in a child process, with or without
CAP_NET_RAW. Run as `python -m tests.test_check_icmp`, this file is that child. No packet goes
to any address but loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rcode
import pytest

from checks import execute
from checks.base import Result
from checks.icmp import PHASES, IcmpSpec, run
from tests.harness.proc import module_command

ROOT = Path(__file__).resolve().parent.parent
NOT_PERMITTED = (
    "ICMP not permitted: grant CAP_NET_RAW (AmbientCapabilities=CAP_NET_RAW) "
    "or allow group 0 in net.ipv4.ping_group_range"
)


def _process_may_ping() -> bool:
    for kind in (socket.SOCK_RAW, socket.SOCK_DGRAM):
        try:
            socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP).close()
        except PermissionError:
            continue
        return True
    return False


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


may_ping = pytest.mark.skipif(not _process_may_ping(), reason="no ICMP socket for this process")


def spec(**fields: Any) -> IcmpSpec:
    return IcmpSpec.model_validate(fields)


def icmp_sockets() -> dict[str, int]:
    """The ICMP sockets of this process: their descriptors, by socket inode."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:  # not a socket
            continue
        try:
            if sock.proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) and sock.family in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                found[os.readlink(f"/proc/self/fd/{name}")] = int(name)
        finally:
            sock.detach()
    return found


def assert_phases(result: Result | dict[str, Any]) -> None:
    phases = result.phases if isinstance(result, Result) else result["phases"]
    assert set(phases) == set(PHASES)


# --- loopback, in this process -------------------------------------------------------------


@may_ping
async def test_it_pings_loopback_and_shows_the_round_trip() -> None:
    result = await run(spec(host="127.0.0.1", count=3, interval="50ms"), timeout=5)

    assert (result.state, result.reason) == ("up", "")
    evidence = result.evidence
    assert evidence["address"] == "127.0.0.1"
    assert (evidence["sent"], evidence["received"], evidence["loss"]) == (3, 3, 0.0)
    assert 0 < evidence["rtt_min"] <= evidence["rtt_avg"] <= evidence["rtt_max"] < 1
    assert evidence["jitter"] >= 0
    assert isinstance(evidence["privileged"], bool)
    assert evidence["icmp_errors"] == []
    assert_phases(result)
    assert result.phases["rtt"] == pytest.approx(evidence["rtt_avg"], abs=1e-6)
    json.dumps(result.as_dict())


@may_ping
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_it_pings_ipv6_loopback() -> None:
    result = await run(spec(host="::1", interval="50ms"), timeout=5)

    assert (result.state, result.reason) == ("up", "")
    assert result.evidence["address"] == "::1"
    assert result.evidence["received"] == 3


@may_ping
async def test_it_reports_an_average_round_trip_above_max_rtt() -> None:
    result = await run(spec(host="127.0.0.1", interval="50ms", max_rtt="0.000001ms"), timeout=5)

    assert result.state == "down"
    assert re.fullmatch(r"average round trip [\d.e-]+ms \(max 1e-06ms\)", result.reason)
    assert result.evidence["received"] == 3


@may_ping
async def test_it_sends_only_the_echoes_that_fit_in_the_timeout() -> None:
    # 10 echoes 200ms apart need 1.8s; in 1s the check measures what fits, loses none of them.
    result = await execute(spec(host="127.0.0.1", count=10, interval="200ms"), timeout=1)

    assert result.state == "up"
    assert 1 <= result.evidence["sent"] < 10
    assert result.evidence["received"] == result.evidence["sent"]
    assert result.duration < 5


@may_ping
async def test_checks_at_once_share_one_socket_and_each_counts_its_own_replies() -> None:
    before = icmp_sockets()
    hosts = ("127.0.0.1", "127.0.0.2")
    checks = [run(spec(host=hosts[i % 2], count=2, interval="20ms"), timeout=5) for i in range(100)]
    results = await asyncio.gather(*checks)

    seen = {(r.state, r.evidence["address"], r.evidence["received"]) for r in results}
    assert seen == {("up", "127.0.0.1", 2), ("up", "127.0.0.2", 2)}
    assert len(set(icmp_sockets()) - set(before)) == 1


@may_ping
async def test_the_next_check_opens_a_fresh_socket_when_the_shared_one_breaks() -> None:
    before = icmp_sockets()
    assert (await run(spec(host="127.0.0.1", count=1), timeout=5)).state == "up"
    (shared,) = set(icmp_sockets()) - set(before)
    # As if a bug elsewhere closed our descriptor and the number went to another file.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, icmp_sockets()[shared])
    os.close(null)

    broken = await run(spec(host="127.0.0.1", count=1), timeout=5)
    result = await run(spec(host="127.0.0.1", count=1), timeout=5)

    assert (broken.state, broken.reason) == (
        "unknown", "the ICMP socket broke (socket operation on non-socket): a new one is opened")
    assert (result.state, result.reason) == ("up", "")
    assert len(set(icmp_sockets()) - set(before)) == 1  # the fresh one


async def test_it_reports_an_address_of_the_other_family() -> None:
    result = await run(spec(host="127.0.0.1", ip_family="ipv6"), timeout=5)

    assert (result.state, result.reason) == ("down", "127.0.0.1 is not an ipv6 address")
    assert_phases(result)


# --- in a network namespace of our own -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    files: Path  # for the configuration a child is given

    def sh(self, *command: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *command], check=True, timeout=10)

    def sysctl(self, key: str, value: str) -> None:
        self.sh("sysctl", "-q", "-w", f"{key}={value}")

    def check(
        self, timeout: float, *, cap_net_raw: bool = True, nxdomain: bool = False, **fields: Any
    ) -> dict[str, Any]:
        """Run the check in a child in this namespace; its Result, as a dict."""
        command = ["ip", "netns", "exec", self.name]
        if nxdomain:
            # Its own /etc/resolv.conf and nsswitch.conf, in a mount namespace of its own: names
            # are asked of the child's server on this namespace's loopback, and nothing else.
            resolv_conf = self.files / "resolv.conf"
            resolv_conf.write_text("nameserver 127.0.0.1\noptions attempts:1\n")
            nsswitch_conf = self.files / "nsswitch.conf"
            nsswitch_conf.write_text("hosts: files dns\n")
            command += ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
            command += [
                'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf'
                ' && shift 2 && exec "$@"',
                "sh",
                str(resolv_conf),
                str(nsswitch_conf),
            ]
        if not cap_net_raw:
            command += ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]
        command += [*module_command("tests.test_check_icmp"), "check", json.dumps(fields)]
        command += [str(timeout), "nxdomain" if nxdomain else "-"]
        child = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 20, check=False
        )
        assert child.returncode == 0, child.stderr
        result: dict[str, Any] = json.loads(child.stdout)
        return result

    @contextmanager
    def responder(
        self,
        *,
        answer: list[int] | None = None,
        source: str = "127.0.0.1",
        delays: dict[int, float] | None = None,
        unreachable: bool = False,
    ) -> Iterator[None]:
        """A peer in this namespace that answers echo requests as told (see `_respond`)."""
        how = {
            "answer": answer,
            "source": source,
            "delays": delays or {},
            "unreachable": unreachable,
        }
        command = ["ip", "netns", "exec", self.name, *module_command("tests.test_check_icmp")]
        with subprocess.Popen(
            [*command, "respond", json.dumps(how)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        ) as peer:
            try:
                assert peer.stdout is not None
                assert peer.stdout.readline() == "ready\n"
                yield
            finally:
                peer.terminate()
                peer.wait(timeout=10)


@pytest.fixture
def bare_netns(tmp_path: Path) -> Iterator[Namespace]:
    """A new namespace, its loopback never brought up: no route to anywhere."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("setpriv"):
        pytest.skip("network namespaces need root, ip and setpriv")
    name = f"probe-icmp-{secrets.token_hex(4)}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode:
        pytest.skip("ip netns add is not permitted here")
    try:
        yield Namespace(name, tmp_path)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


@pytest.fixture
def netns(bare_netns: Namespace) -> Namespace:
    bare_netns.sh("ip", "link", "set", "lo", "up")
    return bare_netns


@pytest.fixture
def silent_netns(netns: Namespace) -> Namespace:
    """A namespace whose kernel does not answer echoes: only a responder does."""
    netns.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
    return netns


def test_it_reports_unknown_when_icmp_is_not_permitted(netns: Namespace) -> None:
    netns.sysctl("net.ipv4.ping_group_range", "1 0")

    result = netns.check(5, cap_net_raw=False, host="127.0.0.1")

    assert (result["state"], result["reason"]) == ("unknown", NOT_PERMITTED)
    assert_phases(result)


def test_it_pings_through_ping_sockets_without_cap_net_raw(netns: Namespace) -> None:
    netns.sysctl("net.ipv4.ping_group_range", "0 0")

    result = netns.check(5, cap_net_raw=False, host="127.0.0.1", interval="50ms")

    assert (result["state"], result["reason"]) == ("up", "")
    assert result["evidence"]["privileged"] is False
    assert result["evidence"]["received"] == 3


def test_it_reports_total_loss_when_the_host_does_not_answer(silent_netns: Namespace) -> None:
    result = silent_netns.check(0.5, host="127.0.0.1", interval="20ms")

    assert (result["state"], result["reason"]) == ("down", "100% packet loss (3 sent)")
    evidence = result["evidence"]
    assert (evidence["sent"], evidence["received"], evidence["loss"]) == (3, 0, 1.0)
    assert result["duration_seconds"] < 5
    assert_phases(result)


def test_it_reports_loss_above_max_loss(silent_netns: Namespace) -> None:
    with silent_netns.responder(answer=[0, 2, 3]):
        result = silent_netns.check(0.5, host="127.0.0.1", count=5, interval="20ms", max_loss="20%")

    assert (result["state"], result["reason"]) == ("down", "40% packet loss (max 20%)")
    assert (result["evidence"]["received"], result["evidence"]["loss"]) == (3, 0.4)


def test_it_accepts_loss_within_max_loss(silent_netns: Namespace) -> None:
    with silent_netns.responder(answer=[0, 1, 2, 3]):
        result = silent_netns.check(0.5, host="127.0.0.1", count=5, interval="20ms", max_loss="20%")

    assert (result["state"], result["reason"]) == ("up", "")
    assert result["evidence"]["loss"] == 0.2


@pytest.mark.parametrize("cap_net_raw", [True, False], ids=["raw", "ping-socket"])
def test_it_does_not_count_replies_from_another_host(
    silent_netns: Namespace, cap_net_raw: bool
) -> None:
    silent_netns.sysctl("net.ipv4.ping_group_range", "0 0")

    with silent_netns.responder(source="127.0.0.2"):
        result = silent_netns.check(0.5, cap_net_raw=cap_net_raw, host="127.0.0.1", interval="20ms")

    assert (result["state"], result["reason"]) == ("down", "100% packet loss (3 sent)")
    assert result["evidence"]["privileged"] is cap_net_raw


def test_it_reports_jitter_above_max_jitter(silent_netns: Namespace) -> None:
    with silent_netns.responder(delays={1: 0.1}):
        result = silent_netns.check(
            5, host="127.0.0.1", interval="50ms", max_jitter="20ms", max_rtt="1s"
        )

    assert result["state"] == "down"
    assert re.fullmatch(r"jitter \d+ms \(max 20ms\)", result["reason"])
    assert result["evidence"]["jitter"] > 0.02
    assert result["evidence"]["rtt_max"] >= 0.1


def test_it_names_the_icmp_error_sent_back(silent_netns: Namespace) -> None:
    with silent_netns.responder(source="127.0.0.3", unreachable=True):
        result = silent_netns.check(5, host="127.0.0.1", interval="50ms")

    # icmplib's words for the ICMP error (checks.icmp._icmp_error): pinned below 4 in pyproject
    reason = "100% packet loss (3 sent): destination host unreachable (from 127.0.0.3)"
    assert (result["state"], result["reason"]) == ("down", reason)
    assert result["evidence"]["icmp_errors"] == ["destination host unreachable (from 127.0.0.3)"]
    assert result["duration_seconds"] < 4  # an error settles an echo: no wait for the timeout


def test_it_reports_an_unreachable_network(bare_netns: Namespace) -> None:
    result = bare_netns.check(5, host="127.0.0.1")

    assert (result["state"], result["reason"]) == ("down", "network is unreachable")
    assert_phases(result)


def test_it_reports_a_name_that_does_not_resolve(netns: Namespace) -> None:
    result = netns.check(5, nxdomain=True, host="nothing.invalid")

    assert (result["state"], result["reason"]) == ("down", "name does not resolve")
    assert_phases(result)


# --- the child: the check, or the responder, inside a namespace ----------------------------


async def _check(fields: str, timeout: float, nxdomain: bool) -> None:
    if nxdomain:
        await asyncio.get_running_loop().create_datagram_endpoint(
            _Nxdomain, local_addr=("127.0.0.1", 53)
        )
    result = await run(IcmpSpec.model_validate(json.loads(fields)), timeout=timeout)
    print(json.dumps(result.as_dict()))


class _Nxdomain(asyncio.DatagramProtocol):
    """A name server that knows no name at all."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        response = dns.message.make_response(dns.message.from_wire(data))
        response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


def _respond(
    answer: list[int] | None, source: str, delays: dict[str, float], unreachable: bool
) -> None:
    """Answer the echo requests of `answer` (all when None), from `source`, each after its delay,
    with an echo reply or with "host unreachable"."""
    listen = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    speak = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    speak.bind((source, 0))
    print("ready", flush=True)
    while True:
        packet, (peer, _) = listen.recvfrom(65535)
        header = (packet[0] & 0x0F) * 4
        echo = packet[header:]
        sequence = struct.unpack("!H", echo[6:8])[0]
        if echo[0] != 8 or (answer is not None and sequence not in answer):
            continue
        if unreachable:
            message = _icmp(3, 1, bytes(4) + packet[: header + 8])
        else:
            message = _icmp(0, 0, echo[4:])
        delay = delays.get(str(sequence), 0.0)
        threading.Timer(delay, speak.sendto, (message, (peer, 0))).start()


def _icmp(kind: int, code: int, rest: bytes) -> bytes:
    body = bytes([kind, code, 0, 0]) + rest
    padded = body + bytes(len(body) % 2)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]


if __name__ == "__main__":
    if sys.argv[1] == "check":
        asyncio.run(_check(sys.argv[2], float(sys.argv[3]), sys.argv[4] == "nxdomain"))
    else:
        _respond(**json.loads(sys.argv[2]))
