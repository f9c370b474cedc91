"""YAML loading that remembers where each key stood, so an error can name file and line.

`load_with_positions(path)` returns the plain data (dicts, lists, scalars) and a map from each
key path (`("checks", 3, "http", "url")`) to the file and line it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]
Position = tuple[str, int]  # file, 1-based line


class YamlError(Exception):
    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


def load_with_positions(path: Path) -> tuple[Any, dict[KeyPath, Position]]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise YamlError(file, 0, f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise YamlError(file, 0, "is not UTF-8 text") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        positions: dict[KeyPath, Position] = {}
        data = _build(loader, node, (), file, positions) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlError(file, line, f"invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise YamlError(file, 0, f"invalid YAML: {err}") from None
    finally:
        loader.dispose()
    return data, positions


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: KeyPath,
    file: str,
    positions: dict[KeyPath, Position],
) -> Any:
    positions.setdefault(path, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<:` merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool):
                raise YamlError(file, line, f"{show_path(path)}: a key must be a plain value")
            if key in result:
                where = show_path((*path, str(key)))
                raise YamlError(file, line, f"{where}: duplicate key")
            child = (*path, str(key))
            positions[child] = (file, line)
            result[key] = _build(loader, value_node, child, file, positions)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, i), file, positions) for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def show_path(path: KeyPath) -> str:
    """`("checks", 3, "http")` -> `checks[3].http`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"

