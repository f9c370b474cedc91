"""How the tests start probe, and programs of their own, as separate processes: always the probe
installed in this virtualenv (the wheel, as users run it), never the checkout's source tree."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The console script pip installed beside this Python: what `probe` is for a user.
PROBE = (str(Path(sys.executable).with_name("probe")),)


def module_command(name: str) -> list[str]:
    """`python -m NAME` for a module of tests/: the checkout goes last on the module path, after
    the installed probe (`-P` keeps the working directory off it), as the suite's own imports
    do (pytest's --import-mode=append)."""
    code = (f"import runpy, sys; sys.path.append({str(REPO)!r}); "
            f"runpy.run_module({name!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-P", "-c", code]


def ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 20) -> bool:
    """Whether the server `proc` answers 200 at `url` within `timeout` (False: it exited, or
    never did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, and SIGKILL when it has not gone in 10 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
