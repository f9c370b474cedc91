"""`probe demo`, the README's first command, as a newcomer runs it: the real daemon, offline,
shows one ticket open, take notes and close itself."""

from __future__ import annotations

import re
import subprocess

from tests.harness.ports import free_port
from tests.harness.proc import PROBE


def test_the_demo_shows_a_ticket_open_be_informed_and_close_itself() -> None:
    done = subprocess.run(
        [*PROBE, "demo", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    events = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line).split(":")[0]
              for line in done.stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d  ticket", line)]
    assert events[0] == "ticket #1 opened (urgent)"
    assert events[1] == "ticket #1 note"  # the triage
    assert "ticket #1 note" in events[2:-1]  # a status note while it is down
    assert events[-1] == "ticket #1 resolved"
    assert "#1 [probe] shop DOWN — HTTP 503 (expected 2xx) from http://127.0.0.1:" in done.stdout
    assert "priority urgent, status resolved, owner nobody, key demo/shop/1" in done.stdout


def test_the_demo_says_what_is_wrong_with_its_listen_address() -> None:
    done = subprocess.run([*PROBE, "demo", "--listen", "nohost"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (
        2, "probe demo --listen: 'nohost' is not host:port (like 127.0.0.1:9469)\n")
