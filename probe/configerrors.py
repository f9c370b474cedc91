"""The wording of configuration errors, shared by probe.config and probe.webconfig: an issue
names the file, the line and the key path (`checks[3].http.url`) before its message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from probe.yamlpos import KeyPath, Position, show_path


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(map(str, issues)))
        self.issues = issues


def place(where: Position) -> str:
    return f"{where[0]}:{where[1]}"


def issue(positions: dict[KeyPath, Position], path: KeyPath, message: str) -> ConfigIssue:
    for depth in range(len(path), -1, -1):
        if path[:depth] in positions:
            file, line = positions[path[:depth]]
            return ConfigIssue(file, line, show_path(path), message)
    any_file = next(iter(positions.values()), ("<config>", 0))[0]
    return ConfigIssue(any_file, 0, show_path(path), message)


def locate(loc: tuple[int | str, ...], data: Any, missing: bool) -> KeyPath:
    """Pydantic's error location as a path through the user's data: union tags and validator
    names that are not keys of the data are dropped."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
            path.append(part)
        elif missing and i == len(loc) - 1 and isinstance(part, str):
            path.append(part)  # a missing key
    return tuple(path)


# pydantic's error types in the words of probe's messages
PLAIN = {
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping of keys",
    "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
}
