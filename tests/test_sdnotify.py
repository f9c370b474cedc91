"""probe.sdnotify against a real unix datagram socket standing in for systemd's."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe.sdnotify import notify, watchdog_timeout


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket bound where $NOTIFY_SOCKET says, as systemd binds it for a Type=notify service."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.fixture
def abstract_systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"probe-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(f"\0{name}")
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        yield sock


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_it_sends_ready_and_status_in_one_datagram(systemd: socket.socket) -> None:
    assert notify("READY=1", "STATUS=12 checks") is True
    assert systemd.recv(4096) == b"READY=1\nSTATUS=12 checks"


def test_it_reaches_a_socket_in_the_abstract_namespace(abstract_systemd: socket.socket) -> None:
    assert notify("WATCHDOG=1") is True
    assert abstract_systemd.recv(4096) == b"WATCHDOG=1"


def test_it_sends_each_call_as_its_own_datagram(systemd: socket.socket) -> None:
    notify("WATCHDOG=1")
    notify("STOPPING=1")
    assert systemd.recv(4096) == b"WATCHDOG=1"
    assert systemd.recv(4096) == b"STOPPING=1"


def test_it_stamps_reloading_with_the_monotonic_clock(systemd: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify("RELOADING=1", "STATUS=reloading /etc/probe") is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, status, stamp = received(systemd)
    assert (reloading, status) == ("RELOADING=1", "STATUS=reloading /etc/probe")
    key, _, usec = stamp.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_it_keeps_a_monotonic_stamp_the_caller_gave(systemd: socket.socket) -> None:
    notify("RELOADING=1", "MONOTONIC_USEC=42")
    assert systemd.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=42"


def test_a_newline_in_a_status_cannot_forge_another_state(systemd: socket.socket) -> None:
    notify("STATUS=check web\nREADY=1 is down")
    assert received(systemd) == ["STATUS=check web READY=1 is down"]


def test_it_does_nothing_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_a_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, logger="probe.sdnotify"):
        assert notify("WATCHDOG=1") is False
        assert notify("WATCHDOG=1") is False
    assert len(caplog.records) == 1
    assert f"cannot notify systemd at {tmp_path / 'gone'}" in caplog.records[0].getMessage()


def test_a_socket_removed_after_start_is_not_an_error(systemd: socket.socket) -> None:
    Path(os.environ["NOTIFY_SOCKET"]).unlink()
    assert notify("STOPPING=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "timeout"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("1000", None, 0.001),
        ("30000000", "other", None),
        ("0", None, None),
        ("-5", None, None),
        ("thirty", None, None),
        (None, None, None),
        (None, "self", None),
    ],
)
def test_it_reads_the_watchdog_timeout_only_if_meant_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, timeout: float | None
) -> None:
    # probe.supervisor pings at half of it (tests/test_supervision.py counts the pings)
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            own = os.getpid()
            monkeypatch.setenv(name, {"self": str(own), "other": str(own + 1)}.get(value, value))
    assert watchdog_timeout() == timeout
