"""What this probe is built from: its own version and those of the pieces that decide how it
talks to targets and helpdesks. `probe --version` prints them; `probe_build_info` carries them,
so a change of behaviour after an upgrade can be matched to the library that changed."""

from __future__ import annotations

import platform
import ssl
from importlib import metadata

from probe import __version__

# Python packages whose release changes what probe sends or how it reads answers.
LIBRARIES = ("uvloop", "aiohttp", "aiosmtplib", "cryptography", "dnspython", "pyyaml", "pydantic")


def components() -> dict[str, str]:
    """`probe`, `python`, `openssl` (Python's ssl module, which the checks and helpdesk calls
    use), then each of LIBRARIES: its installed version, or "none"."""
    found = {"probe": __version__,
             "python": f"{platform.python_version()} ({platform.python_implementation()})",
             "openssl": ssl.OPENSSL_VERSION.removeprefix("OpenSSL ")}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "none"
    return found


def text() -> str:
    """`probe --version`: the first line as usual (`probe 0.2.0`), then one line per piece."""
    parts = components()
    lines = [f"probe {parts.pop('probe')}"]
    lines += [f"  {name:<13} {version}" for name, version in parts.items()]
    return "\n".join(lines)
