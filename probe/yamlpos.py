"""YAML loading that remembers where each key stood, so an error can name file and line.

`load_with_positions(path)` returns the plain data (dicts, lists, scalars) and a map from each
key path (`("checks", 3, "http", "url")`) to the file and line it came from. Keys are strings
(a key written `1` or `yes` is the string "1" or "yes", as the schema names every key).

It is safe against hostile files: only plain YAML types are built (never a Python object),
aliases are expanded to at most MAX_EXPANDED values in all (a "billion laughs" document is
refused, not expanded; a large file of plain values is not limited), an alias inside its own
anchor and nesting deeper than Python can follow are errors, and every problem is a YamlError
with the line it was found on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]
Position = tuple[str, int]  # file, 1-based line

# Values built again through aliases: far more than anchors for shared defaults need, few enough
# to build in well under a second. Values written out in the file are not counted: a
# configuration of 10,000 checks has some 150,000 of them.
MAX_EXPANDED = 100_000
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_TAGS: dict[type[yaml.Node], str] = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


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
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        builder = _Builder(loader, file)
        data = builder.build(node, ()) if node is not None else None
    except yaml.reader.ReaderError as err:  # a control character, raised before any parsing
        line = text.count("\n", 0, err.position) + 1
        raise YamlError(file, line, f"invalid YAML: character #x{err.character:04x} is not "
                        "allowed (is this a text file?)") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlError(file, line, f"invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise YamlError(file, 0, f"invalid YAML: {err}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        line = loader.get_mark().line + 1 if loader else 0
        raise YamlError(file, line, "invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, builder.positions


class _Builder:
    """Builds the data of one document. A node reached through several aliases is built once
    per alias (each place gets its own position), so the values built are counted."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.positions: dict[KeyPath, Position] = {}
        self.seen: set[int] = set()
        self.expanded = 0
        self.inside: set[int] = set()  # the collections being built, to catch an alias loop

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        line = node.start_mark.line + 1
        self.positions.setdefault(path, (self.file, line))
        if id(node) in self.seen:
            self.expanded += 1
            if self.expanded > MAX_EXPANDED:
                raise YamlError(self.file, line, f"invalid YAML: aliases expand to more than "
                                f"{MAX_EXPANDED} values")
        else:
            self.seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if node.tag != _PLAIN_TAGS.get(type(node)):
            raise YamlError(self.file, line, f"{show_path(path)}: the tag {_tag(node)} is not "
                            "allowed here")
        if id(node) in self.inside:
            raise YamlError(self.file, line, f"{show_path(path)}: an alias refers to a value "
                            "that contains it")
        self.inside.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.inside.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        own_keys: set[str] = set()
        for key_node, value_node, own in self.pairs(node, path):
            line = key_node.start_mark.line + 1
            name = self.key(key_node, path)
            if own:
                if name in own_keys:
                    raise YamlError(self.file, line, f"{show_path((*path, name))}: duplicate key")
                own_keys.add(name)
            elif name in result:
                continue  # merged, and overridden by the mapping's own key or an earlier map
            child = (*path, name)
            self.positions[child] = (self.file, line)
            result[name] = self.build(value_node, child)
        return result

    def pairs(self, node: yaml.MappingNode, path: KeyPath,
              ) -> Iterator[tuple[yaml.Node, yaml.Node, bool]]:
        """The mapping's own pairs first (`own` true), then those of the maps merged into it
        with `<<:`, in merge order: YAML's merge type says the mapping's own keys win, then the
        first map merged. probe does the merge itself rather than through PyYAML's
        flatten_mapping, whose order changed in PyYAML 6.0.4 (yaml/pyyaml#953): the meaning of a
        configuration must not depend on the library's release."""
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
            else:
                yield key_node, value_node, True
        for merge in merges:
            maps = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for merged in maps:
                line = merged.start_mark.line + 1
                if not isinstance(merged, yaml.MappingNode) or merged.tag != _PLAIN_TAGS[
                        yaml.MappingNode]:
                    raise YamlError(self.file, line, f"{show_path(path)}: a merge (<<) takes a "
                                    "mapping or a list of mappings")
                if id(merged) in self.inside or id(merge) in self.inside:
                    raise YamlError(self.file, line, f"{show_path(path)}: a merge refers to a "
                                    "value that contains it")
                self.inside.add(id(merged))
                try:
                    for key_node, value_node, _ in self.pairs(merged, path):
                        yield key_node, value_node, False
                finally:
                    self.inside.discard(id(merged))

    def key(self, node: yaml.Node, path: KeyPath) -> str:
        key = self.scalar(node, path) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(key, str | int | float | bool):
            raise YamlError(self.file, node.start_mark.line + 1,
                            f"{show_path(path)}: a key must be a plain value")
        return key if isinstance(key, str) else str(node.value)  # as written

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, LookupError, AttributeError, TypeError):
            # PyYAML's constructors fail this way on a value their tag cannot take (!!int x,
            # 2026-02-30, a number of more than 4300 digits).
            shown = repr(node.value) if len(node.value) <= 40 else repr(node.value[:37] + "...")
            raise YamlError(self.file, node.start_mark.line + 1,
                            f"{show_path(path)}: {shown} is not a valid {_tag(node)}") from None


def _tag(node: yaml.Node) -> str:
    return node.tag.replace("tag:yaml.org,2002:", "!!")


def show_path(path: KeyPath) -> str:
    """`("checks", 3, "http")` -> `checks[3].http`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"
