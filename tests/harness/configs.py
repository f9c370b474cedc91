"""Configuration variants built from data. A test takes a base configuration as a mapping and
states what it changes as a mapping too; the file is written with yaml. A change to a key the
base no longer has adds that key, which probe rejects as unknown: the variant cannot go on
silently testing the default, as a text replacement that stopped matching would.

Where the text itself is the subject (anchors, merge keys, a duplicate key, the line an error
names), `edited` changes it, and fails unless what it replaces is there exactly once."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.harness.proc import PROBE


def merged(base: Mapping[str, Any], *changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with each of `changes` merged in: a mapping into the mapping under the same key,
    any other value in place of the old one. `base` is left as it was."""
    result = copy.deepcopy(dict(base))
    for change in changes:
        for key, value in change.items():
            old = result.get(key)
            if isinstance(value, Mapping) and isinstance(old, Mapping):
                result[key] = merged(old, value)
            else:
                assert not isinstance(old, Mapping), f"{key}: {value!r} would replace a mapping"
                result[key] = copy.deepcopy(value)
    return result


def dumped(config: Mapping[str, Any]) -> str:
    """`config` as YAML, keys in the order given."""
    return yaml.safe_dump(dict(config), sort_keys=False)


def edited(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced by `new`; `old` must occur exactly once."""
    found = text.count(old)
    assert found == 1, f"{old!r} occurs {found} times in the configuration, not once"
    return text.replace(old, new)


def validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`probe validate` on `text`, written to tmp_path/probe.yaml."""
    path = tmp_path / "probe.yaml"
    path.write_text(text)
    return subprocess.run([*PROBE, "validate", "--config", str(path)], capture_output=True,
                          text=True, timeout=60)


def refused(tmp_path: Path, text: str) -> list[str]:
    """What `probe validate` says of `text` it refuses, each line without the file's path
    ("LINE: KEY: MESSAGE")."""
    done = validate(tmp_path, text)
    assert done.returncode == 1, done.stdout + done.stderr
    prefix = f"{tmp_path / 'probe.yaml'}:"
    return [line.removeprefix(prefix) for line in done.stderr.splitlines()[:-1]]
