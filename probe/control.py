"""`probe reload`, and the record it reads: the running daemon's pid and the outcome of its last
reload, kept in `daemon.json` in the state directory.

A reload is a signal (SIGHUP), which says nothing back. systemd before 253 (Debian 12, RHEL 9)
has no Type=notify-reload, so `systemctl reload` returns as soon as ExecReload does: if that is
a bare kill, before probe has read the files, and a refused file goes unnoticed. `probe reload`
validates the files, signals the daemon, and waits until the daemon's record says it has
reloaded, and how. It needs nothing probe does not ship (minimal images lack /bin/kill), and no
credentials for the HTTP endpoint: the signal is allowed to the daemon's own user and root, and
so is the state directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("probe")

RECORD = "daemon.json"
WAIT = 60.0  # seconds for a reload to be answered: a load of 10,000 checks takes about 2 s
POLL = 0.05


@dataclass(frozen=True)
class Record:
    pid: int
    reloads: int = 0  # how many reloads the daemon has finished since it started
    ok: bool = True  # whether the last one was taken
    errors: list[str] = field(default_factory=list)  # why it was refused


def write(state_dir: Path, record: Record) -> None:
    """Replace the record in one step (a reader never sees half of it). A state directory that
    cannot be written costs only `probe reload`'s answer: logged, never raised."""
    path = state_dir / RECORD
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(asdict(record)), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as err:
        log.warning("cannot write %s, which `probe reload` reads: %s", path, err.strerror or err)


def remove(state_dir: Path, pid: int) -> None:
    """At stop: only this daemon's own record (a successor may have written its own)."""
    record = read(state_dir)
    if record is not None and record.pid == pid:
        (state_dir / RECORD).unlink(missing_ok=True)


def read(state_dir: Path) -> Record | None:
    try:
        data = json.loads((state_dir / RECORD).read_text(encoding="utf-8"))
        return Record(int(data["pid"]), int(data["reloads"]), bool(data["ok"]),
                      [str(e) for e in data["errors"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ReloadFailed(Exception):
    """The daemon refused the files, or could not be asked: in words."""


def reload(state_dir: Path, pid: int | None, wait: float = WAIT) -> Record:
    """Signal the daemon (`pid`, else the one the record names) and wait for its answer."""
    before = read(state_dir)
    if pid is None:
        if before is None:
            raise ReloadFailed(f"probe is not running: {state_dir / RECORD} does not exist "
                               "(give --pid PID to signal a daemon that cannot write it)")
        pid = before.pid
    count = before.reloads if before is not None and before.pid == pid else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadFailed(f"probe is not running: no process {pid}") from None
    except PermissionError:
        raise ReloadFailed(f"not allowed to signal process {pid}: run this as root or as "
                           "probe's own user") from None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(POLL)
        now = read(state_dir)
        if now is not None and now.pid == pid and now.reloads > count:
            return now
    raise ReloadFailed(f"process {pid} did not say within {wait:.0f}s that it reloaded "
                       f"({state_dir / RECORD} did not change): is it probe, with this state "
                       "directory?")
