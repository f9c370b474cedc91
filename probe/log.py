"""Logs that read well in journald: one line per event, `message key=value ...` (logfmt).

Under systemd (JOURNAL_STREAM set) each line starts with its syslog priority (`<3>`), which
journald turns into the entry's priority, and carries no timestamp, which journald adds.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def _value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\') or "\n" in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def fields(**values: Any) -> str:
    """`fields(check="web", reason="HTTP 503")` -> `check=web reason="HTTP 503"`."""
    return " ".join(f"{k}={_value(v)}" for k, v in values.items() if v is not None)


class _Journald(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n  ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_Journald("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
