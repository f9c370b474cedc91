"""systemd's notify protocol: telling the service manager we are ready, reloading, stopping, alive.

A message is a few `KEY=value` lines in one datagram to the unix socket named by `$NOTIFY_SOCKET`
(a leading `@` means Linux's abstract namespace). Outside systemd the variable is unset and every
call does nothing, so the daemon needs no "am I under systemd?" branch of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

_unreachable: set[str] = set()  # logged once each: a gone socket would log at every watchdog ping


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=12 checks") to systemd; True if it was delivered.

    "RELOADING=1" gets a "MONOTONIC_USEC=" alongside, which Type=notify-reload (systemd 253+)
    needs to tell this reload apart from an earlier one.
    """
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return False
    lines = [state.replace("\n", " ") for state in states]  # a newline would start a new state
    if "RELOADING=1" in lines and not any(s.startswith("MONOTONIC_USEC=") for s in lines):
        lines.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    address = "\0" + where[1:] if where.startswith("@") else where
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as err:
        if where not in _unreachable:
            _unreachable.add(where)
            log.debug("cannot notify systemd at %s: %s", where, err)
        return False
    return True


def watchdog_timeout() -> float | None:
    """systemd's WatchdogSec, in seconds, or None if unset.

    `$WATCHDOG_PID` names the process the watchdog is meant for; a child that inherited the
    environment must not ping on the parent's behalf.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000

