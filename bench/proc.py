"""The processes the benchmark starts, and what it reads of them.

Every process is started through `Processes`, which stops them all, newest first, when the
benchmark ends — normally, on an exception or on Ctrl-C. Each child also gets SIGTERM from the
kernel if the benchmark itself dies (PR_SET_PDEATHSIG), so none outlives a `kill -9`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class Unavailable(Exception):
    """A scenario cannot run here (a Debian package that cannot be installed...)."""


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


def ensure(binary: str, packages: Sequence[str]) -> str:
    """The path of `binary`, installing the first of `packages` that installs if it is missing
    (apt-get, through sudo when not root). Raises Unavailable when none does."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    errors = []
    for updated in (False, True):
        if updated:
            subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True,
                           check=False)
        for package in packages:
            done = subprocess.run([*sudo, "apt-get", "install", "-y", "-q", package], env=env,
                                  capture_output=True, text=True, check=False)
            found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
            if done.returncode == 0 and found:
                return found
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            errors.append(f"{package}: {last}")
    raise Unavailable(f"{binary} missing and apt-get could not install it ({'; '.join(errors)})")


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """utime + stime of the process itself (not of its children)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Starts processes and stops every one of them at exit."""

    def __init__(self) -> None:
        self._started: list[Process] = []
        self._cleanups: list[Callable[[], None]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        cpus: set[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Process:
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,  # Ctrl-C reaches the benchmark only
                preexec_fn=_child_setup(cpus),
            )
        process = Process(name, popen, log, stop_signal)
        self._started.append(process)
        return process

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self._started:
            self._started.remove(process)

    def close(self) -> None:
        for process in reversed(self._started):
            with contextlib.suppress(Exception):
                process.stop()
        self._started.clear()
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self._cleanups.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def wait_http(url: str, process: Process, timeout: float = 30.0,
              ok: Iterable[int] = (200,)) -> None:
    """Until `url` answers with one of `ok`; raises if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited: {process.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in ok:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not answer {url} in {timeout:.0f}s: "
                               f"{process.tail()}")
        time.sleep(0.1)


def wait_port(port: int, process: Process, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited: {process.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not listen on {port} in {timeout:.0f}s")
        time.sleep(0.05)
