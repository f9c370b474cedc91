"""A minimal Debian 12 booted with a real systemd, in a container, for tests of probe's unit.

What it owns: the pristine root file system (debootstrap, built once and kept as a tarball under
.cache/), a fresh copy of it for each boot, the systemd-nspawn process that boots it, and the
ways in: commands run through nsenter, and Python calls made inside the container's network.

The container has a network of its own, loopback only (`--private-network`): nothing it runs
can reach another address, whatever units its boot starts, and probe's port 9469 and the ssh
check's port 22 are the container's own, free whatever the host runs. Only commands run with
`network="host"` (pip, for the README's install block) use the host's network.

systemd-nspawn runs without a systemd on the host (`--register=no --keep-unit`): PID 1 of this
machine may be anything. Root only.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")

SUITE = "bookworm"  # Debian 12: systemd 252 and Python 3.11, what the unit is written for
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv")
# Units of the pristine root that would do work during a test: apt's daily runs fetch from
# the mirror. timesyncd is not in minbase; masked anyway, so that a later Debian that pulls it
# in still sends no NTP packet. (The private network already stops both; masking keeps the
# boot quiet and the journal free of their failures.)
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "systemd-timesyncd.service")
# A root shell's environment in the container: nothing of the test's environment leaks in.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the host's pip needs to reach PyPI, passed to commands run on the host's network.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "NO_PROXY", "PIP_INDEX_URL")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BOOT_TIMEOUT = 60.0
# Each boot's copy of the root: /var/tmp, as it takes 300 MB and /tmp may be memory.
RUNS = Path("/var/tmp")
RUN_PREFIX = "probe-systemd-boot-"
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def missing() -> str | None:
    """Why containers cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container"),
                          ("nsenter", "util-linux"), ("tar", "tar")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {package})"
    return None


def pristine_root(cache: Path) -> Path:
    """The tarball of a freshly debootstrapped root, built on the first call (about a minute
    and 300 MB) and reused after. Its name carries a digest of how it is built: a change to
    PACKAGES or MASKED builds a new one."""
    recipe = repr((SUITE, MIRROR, PACKAGES, MASKED)).encode()
    tarball = cache / f"{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}.tar"
    cache.mkdir(parents=True, exist_ok=True)
    # Two test runs at once build it once: the second waits here, then finds it.
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            _build(tarball)
    return tarball


def _build(tarball: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir="/var/tmp") as work:
        root = Path(work) / "root"
        log = Path(work) / "debootstrap.log"
        with log.open("wb") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 SUITE, str(root), MIRROR],
                stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False)
        if done.returncode:
            _unmount_under(root)  # /proc, /sys: removing the root must not reach the host's
            raise AssertionError(f"debootstrap failed ({done.returncode}):\n"
                                 + _tail(log.read_text(errors="replace")))
        for unit in MASKED:
            mask = root / "etc/systemd/system" / unit
            mask.unlink(missing_ok=True)
            mask.symlink_to("/dev/null")
        # apt's lists and downloaded packages serve only to install more, which no test does:
        # 100 MB less to copy on every boot. The directories stay, as apt expects them.
        for cached in (root / "var/lib/apt/lists", root / "var/cache/apt"):
            for file in cached.rglob("*"):
                if not file.is_dir():
                    file.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--create", "--xattrs", "--numeric-owner", f"--file={partial}",
                        f"--directory={root}", "."], check=True, timeout=300)
        partial.rename(tarball)  # whole or absent: a run killed half-way leaves no torn cache


class Container:
    """A booted container: its root on the host, and its PID 1 (the leader) seen from here."""

    def __init__(self, root: Path, nspawn: subprocess.Popen[bytes], console: Path) -> None:
        self.root, self.nspawn, self.console = root, nspawn, console
        self.leader = 0
        self._netns = -1
        self._network: ThreadPoolExecutor | None = None

    def path(self, inside: str) -> Path:
        """Where a file of the container lies on the host (not for /run or /tmp: mounts of
        the container's own)."""
        return self.root / inside.lstrip("/")

    def run(self, *command: str, network: Literal["container", "host"] = "container",
            env: Mapping[str, str] = {}, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs `command` as root in the container, with a root shell's clean environment.
        network="host" keeps the host's network (for pip); every other namespace is the
        container's."""
        enter = ["--mount", "--uts", "--ipc", "--pid", "--cgroup"]
        if network == "container":
            enter.append("--net")
        variables = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **env}
        done = subprocess.run(
            ["nsenter", f"--target={self.leader}", *enter, "--", "env", "-i",
             *(f"{k}={v}" for k, v in variables.items()), *command],
            capture_output=True, text=True, encoding="utf-8", errors="replace",
            timeout=timeout, check=False)
        if check and done.returncode:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n"
                                 f"{done.stdout}{done.stderr}")
        return done

    def in_network(self, call: Callable[[], T]) -> T:
        """`call()` with every socket it opens in the container's network, where probe listens
        on the container's 127.0.0.1. The socket stays there when handed back to this thread:
        a listening socket made here serves the container's loopback."""
        if self._network is None:
            # setns() moves the calling thread alone: one worker thread lives in the container's
            # network, the test's own threads stay on the host's.
            self._network = ThreadPoolExecutor(1, "container-network", self._enter_network)
        return self._network.submit(call).result()

    def _enter_network(self) -> None:
        if _libc.setns(self._netns, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into the container's network: {os.strerror(errno)}")

    # --- boot and power off -------------------------------------------------------------------

    def _wait_until_booted(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not self.leader:
            self._still_running()
            self.leader = _child_in_other_pid_namespace(self.nspawn.pid)
            if time.monotonic() > deadline:
                raise AssertionError(f"no container leader after {BOOT_TIMEOUT}s\n{self.log()}")
            time.sleep(0.05)
        self._netns = os.open(f"/proc/{self.leader}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        # Until PID 1 listens on its private bus, systemctl fails at once: ask again.
        while True:
            self._still_running()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"systemd did not finish booting in {BOOT_TIMEOUT}s\n"
                                     f"{self.log()}")
            state = self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=left).stdout.strip()
            # degraded: some unit of the minimal Debian failed in a container; not probe's.
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)

    def _still_running(self) -> None:
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}\n{self.log()}")

    def log(self) -> str:
        """The end of the container's console: systemd's boot and shutdown messages."""
        return _tail(self.console.read_text(errors="replace")) if self.console.exists() else ""

    def power_off(self) -> None:
        # SIGTERM makes nspawn ask PID 1 for an orderly shutdown (SIGRTMIN+3) and wait for it.
        if self.nspawn.poll() is None:
            self.nspawn.terminate()
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                # Killing a PID namespace's init kills everything in it; nspawn then exits.
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                try:
                    self.nspawn.wait(10)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait(10)
        if self._network is not None:
            self._network.shutdown()
        if self._netns >= 0:
            os.close(self._netns)


@contextlib.contextmanager
def boot(tarball: Path, binds: Sequence[Path] = ()) -> Iterator[Container]:
    """Boots a fresh copy of `tarball`'s root and powers it off afterwards, even on failure.
    `binds` are host files the container sees read-only at the same path."""
    _remove_stale_runs()
    work = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=RUNS))
    container: Container | None = None
    # Held for as long as this copy is in use, and let go by the kernel if the test run dies.
    in_use = (work / "lock").open("w")
    fcntl.flock(in_use, fcntl.LOCK_EX)
    try:
        root = work / "root"
        root.mkdir()
        subprocess.run(["tar", "--extract", "--xattrs", "--numeric-owner", "--same-permissions",
                        f"--file={tarball}", f"--directory={root}"], check=True, timeout=300)
        console = work / "console.log"
        with console.open("wb") as out:
            nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", f"--directory={root}", "--boot",
                 f"--machine={machine_name(work.name)}",
                 "--register=no", "--keep-unit", "--private-network", "--link-journal=no",
                 # The container resolves names as the host does: for pip, which runs in the
                 # host's network.
                 "--resolv-conf=copy-host",
                 # --console=interactive would need a terminal: the console goes to the log.
                 "--console=read-only",
                 *(f"--bind-ro={path}" for path in binds)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        container = Container(root, nspawn, console)
        container._wait_until_booted()
        yield container
    finally:
        if container is not None:
            container.power_off()
        shutil.rmtree(work, ignore_errors=True)
        in_use.close()


def _remove_stale_runs() -> None:
    """Removes the copies that killed test runs left (the finally above never ran): those whose
    lock nobody holds."""
    for work in RUNS.glob(f"{RUN_PREFIX}*"):
        try:
            lock = (work / "lock").open()
        except FileNotFoundError:
            continue  # just made, not locked yet
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another test run's container
            shutil.rmtree(work, ignore_errors=True)


def copy_checkout(repository: Path, destination: Path) -> None:
    """The files of `repository` as git sees them (committed, changed and new; not what
    .gitignore names: .venv, .cache, dist) into `destination`, modes kept."""
    listed = subprocess.run(
        # safe.directory: root (these tests) reading a clone that another user owns.
        ["git", "-c", f"safe.directory={repository}", "-C", str(repository), "ls-files", "-z",
         "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = repository / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in git
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def host_environment() -> dict[str, str]:
    """The host's proxy and index settings, for commands that reach PyPI from the
    container."""
    return {k: os.environ[k] for k in PROXY_VARIABLES if k in os.environ}


def machine_name(directory: str) -> str:
    """A name nspawn takes for the machine, from its temporary directory's (letters, digits and
    inner dashes: "probe-x_4w6dkmg_" became "probe-x-4w6dkmg-", which nspawn refused)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", directory).strip("-")[:64].rstrip("-")


def _child_in_other_pid_namespace(parent: int) -> int:
    """The child of `parent` that is PID 1 of a new PID namespace, or 0 while there is none."""
    ours = os.readlink("/proc/self/ns/pid")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # Field 4 of stat is the parent's PID; the name before it may hold spaces.
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and \
                    os.readlink(entry / "ns/pid") != ours:
                return int(entry.name)
    return 0


def _unmount_under(root: Path) -> None:
    """Unmounts what a failed debootstrap may have left mounted in `root`, deepest first."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, timeout=30)


def _die_with_parent() -> None:
    # A test run killed outright (SIGKILL, a CI timeout) must not leave a booted container:
    # nspawn gets SIGTERM when pytest dies, and powers the container off.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])
