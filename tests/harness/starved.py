"""`probe` run with its file descriptors used up, to see what a check says when this host, not
the target, is out of a resource: a real EMFILE from the kernel, brought about from outside.

The command is a small Python wrapper around the installed console script. It loads what
`probe` loads while files can still be opened, lowers RLIMIT_NOFILE (so that using the rest up
is quick), opens /dev/null until the kernel says EMFILE, and gives back exactly as many
descriptors as a new event loop takes (measured, not assumed). `probe` then reads its
configuration and starts its loop, and the first socket a check opens fails with EMFILE.
"""

from __future__ import annotations

import sys

from tests.harness.proc import PROBE

_WRAPPER = r"""
import asyncio, errno, os, resource, runpy, sys

script, sys.argv = sys.argv[1], sys.argv[1:]
import probe.cli  # noqa: F401  (everything the command imports, imported now)


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


before = open_descriptors()
loop = asyncio.new_event_loop()
loop_takes = open_descriptors() - before
loop.close()

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
held = []
while True:
    try:
        held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as err:
        if err.errno != errno.EMFILE:
            raise
        break
for fd in held[:loop_takes]:  # the configuration is read (and closed) before the loop starts
    os.close(fd)
runpy.run_path(script, run_name="__main__")
"""


def starved(*args: str) -> list[str]:
    """The command line of `probe ARGS` with no file descriptor left for a check's socket.
    `-P` keeps the working directory off the module path: probe is the installed one."""
    return [sys.executable, "-P", "-c", _WRAPPER, PROBE[0], *args]
