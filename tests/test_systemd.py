"""systemd/probe.service as systemd reads it: hardened (security), free of mistakes (verify).

Both run offline, from the unit file alone: no systemd needs to be running.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "probe.service"
MAX_EXPOSURE = 2.0  # systemd rates 0-10; Debian's blackbox_exporter unit gets 9.2 UNSAFE

pytestmark = pytest.mark.skipif(
    not SYSTEMD_ANALYZE.exists(), reason="systemd-analyze is missing (Debian package systemd)"
)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYSTEMD_ANALYZE), "--no-pager", *args],
        capture_output=True, text=True, encoding="utf-8", timeout=60, check=False,
    )


def security(unit: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    # --threshold is in tenths: the exit status turns non-zero above MAX_EXPOSURE as well.
    done = analyze("security", "--offline=true", f"--threshold={round(MAX_EXPOSURE * 10)}",
                   str(unit))
    found = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)",
                      done.stdout)
    assert found, f"no exposure level in:\n{done.stdout}{done.stderr}"
    return float(found[1]), done


def test_the_unit_leaves_a_compromised_probe_little_to_work_with() -> None:
    exposure, done = security(UNIT)
    weak = "\n".join(line for line in done.stdout.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure}, the settings that cost it:\n{weak}"
    assert done.returncode == 0, done.stderr


def test_the_rating_would_fail_a_unit_without_the_hardening(tmp_path: Path) -> None:
    bare = tmp_path / "probe.service"
    bare.write_text("[Service]\nExecStart=/usr/local/bin/probe run --config /etc/probe\n")
    exposure, done = security(bare)
    assert exposure > MAX_EXPOSURE
    assert done.returncode != 0


def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    # verify insists that every command exists; the one pip installed next to this Python
    # stands in for /usr/local/bin/probe.
    probe = Path(sys.executable).with_name("probe")
    if not probe.exists():
        pytest.skip(f"no probe command next to {sys.executable}: run scripts/test")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/probe", str(probe)))
    # Other units on this machine, pulled in through multi-user.target, may print warnings of
    # their own: only ours count.
    done = analyze("verify", "--recursive-errors=no", str(unit))
    output = done.stdout + done.stderr
    assert [line for line in output.splitlines() if unit.name in line] == []
    assert done.returncode == 0, output
