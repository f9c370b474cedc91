"""Hypothesis strategies for hostile configuration files: YAML documents that nest mappings,
lists and scalars at random around the schema's real key names, with values of the wrong type,
huge numbers, unicode, YAML tags (Python objects included), anchors, aliases, merge keys and
alias bombs; and the bytes of such a document mangled into binary junk or invalid UTF-8.

The documents are written by a small emitter of our own (flow style inside, block style at
the top), since PyYAML's dumper cannot write tags, merge keys or dangling aliases on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from checks import KINDS
from probe.config import Agent, CheckBase, Defaults, Flapping, Maintenance, TicketPolicy
from probe.helpdesks import ROUTES

ANCHORS = ("a", "b", "c")
TAGS = (
    "!!str", "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!!binary", "!!set",
    "!!omap", "!!seq", "!!map", "!!python/object:os.system", "!!python/object/apply:os.system",
    "!!python/name:os.system", "!!python/tuple", "!custom", "!<tag:example.com,2026:x>",
)
# Values a configuration really holds, right for some key and wrong for most.
PLAUSIBLE = (
    "30s", "1h30m", "250ms", "0s", "-1s", "5 m", "1.5", "30", "1e9y", "9" * 30 + "y", "20%",
    "120%", "nan%", "03:00", "24:00", "02:00", "Europe/Berlin", "Mars/Olympus", "UTC",
    "127.0.0.1", "::1", "[::1]:53", "127.0.0.1:9469", "localhost", "127.0.0.1:99999",
    "http://127.0.0.1:9/", "https://[::1]:9/x", "ftp://127.0.0.1/", "http://user:pw@127.0.0.1/",
    "http://[::1", "env:PROBE_FUZZ", "env:", "s3cr3t", "/etc/hostname", "/nonexistent/file",
    "a@b.example", "owner/repo", "2xx", "7xx", "^SSH-2\\.0-", "(unclosed", "A", "MX", "CAA",
    "0 issue", "NXDOMAIN", "udp", "tcp", "rt", "local", "webhook", "jira", "github", "email",
    "zendesk", "freshdesk", "servicenow", "pagerduty", "urgent", "sun", "reopen", "auto",
    "2026-02-30", "2026-12-01T02:00:00Z", "0001-01-01T00:00:00+14:00", "yes", "no", "on", "~",
    "null", ".inf", "-.inf", ".nan", "0x1F", "0o17", "1_000", "1:30", "1e400", "true",
    "ünïcödé", "日本語", "\u202e", "\x85", "\ufeff", "a\u0000b", "\ud800",
)


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


SECTION_KEYS: dict[str, list[str]] = {
    "agent": _keys(Agent),
    "defaults": _keys(Defaults),
    "ticket": _keys(TicketPolicy),
    "flapping": _keys(Flapping),
    "maintenance": _keys(Maintenance),
    "check": [*_keys(CheckBase), *KINDS],
    **{kind: _keys(k.spec) for kind, k in KINDS.items()},
    **{f"route:{name}": _keys(route) for name, route in ROUTES.items()},
}
VOCABULARY = sorted({key for keys in SECTION_KEYS.values() for key in keys}
                    | {"checks", "ticketing", "routes", "poll_interval", "<<"})


# --- the document model and its emitter ----------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    text: str
    style: str = "plain"  # plain | double | single
    tag: str | None = None
    anchor: str | None = None


@dataclass(frozen=True)
class Alias:
    name: str


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]
    tag: str | None = None
    anchor: str | None = None


@dataclass(frozen=True)
class Map:
    pairs: tuple[tuple[Node, Node], ...]
    tag: str | None = None
    anchor: str | None = None


Node = Scalar | Alias | Seq | Map


def emit(node: Node) -> str:
    """One node in flow style. Plain scalars are written as they are: a plain scalar that
    breaks the syntax is one more hostile input."""
    if isinstance(node, Alias):
        return f"*{node.name}"
    prefix = "".join(f"{p} " for p in (f"&{node.anchor}" if node.anchor else None, node.tag) if p)
    if isinstance(node, Scalar):
        if node.style == "double":
            body = json.dumps(node.text)  # JSON's escapes are YAML's too; \ud800 survives
        elif node.style == "single":
            body = "'" + node.text.replace("'", "''") + "'"
        else:
            body = node.text
        return prefix + body
    if isinstance(node, Seq):
        return prefix + "[" + ", ".join(emit(item) for item in node.items) + "]"
    return prefix + "{" + ", ".join(f"{emit(k)}: {emit(v)}" for k, v in node.pairs) + "}"


def emit_document(top: Node) -> str:
    """A top-level mapping in block style, one key a line, as a person writes a file."""
    if isinstance(top, Map) and top.tag is None and top.anchor is None:
        return "".join(f"{emit(k)}: {emit(v)}\n" for k, v in top.pairs)
    return emit(top) + "\n"


# --- strategies ----------------------------------------------------------------------------

_big_numbers = st.sampled_from([
    str(2**63), str(-(2**63) - 1), "9" * 400, "9" * 4301, "1e308", "1e309", "-0", "0.0000001",
])
_scalar_text = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.sampled_from(VOCABULARY),
    st.integers().map(str),
    st.floats().map(repr),
    _big_numbers,
    st.text(max_size=24),
)
_anchor = st.sampled_from([None, None, None, *ANCHORS])
_tag = st.sampled_from([*[None] * 2 * len(TAGS), *TAGS])
# How a scalar is written, in one draw (a draw each would make examples slow to generate):
# mostly plain and bare, now and then quoted, tagged or anchored.
_DECORATIONS = [
    *[("plain", None, None)] * 12, ("double", None, None), ("double", None, None),
    ("single", None, None), *[("plain", tag, None) for tag in TAGS],
    *[("double", tag, None) for tag in TAGS[:6]], *[("plain", None, a) for a in ANCHORS],
]


def _scalar(text: str, decoration: tuple[str, str | None, str | None]) -> Scalar:
    return Scalar(text, *decoration)


def scalars(text: st.SearchStrategy[str] = _scalar_text) -> st.SearchStrategy[Scalar]:
    return st.builds(_scalar, text, st.sampled_from(_DECORATIONS))


_aliases = st.builds(Alias, st.sampled_from(ANCHORS))
_keys_strategy = st.one_of(
    scalars(st.sampled_from(VOCABULARY)), scalars(), _aliases,
    st.just(Scalar("<<")),  # a merge key: its value must be a mapping or a list of them
)


def _collections(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.builds(Seq, st.lists(children, max_size=4).map(tuple), _tag, _anchor),
        st.builds(Map, st.lists(st.tuples(_keys_strategy, children), max_size=5).map(tuple),
                  _tag, _anchor),
    )


anything: st.SearchStrategy[Node] = st.recursive(scalars() | _aliases, _collections,
                                                 max_leaves=12)


# Mostly plausible scalars, so that validation gets past the first error of a section.
_value: st.SearchStrategy[Node] = st.one_of(
    scalars(st.sampled_from(PLAUSIBLE)), scalars(st.sampled_from(PLAUSIBLE)), anything
)


def _section(keys: list[str]) -> st.SearchStrategy[Map]:
    pairs = st.lists(st.tuples(scalars(st.sampled_from(keys)), _value), max_size=6)
    return st.builds(Map, pairs.map(tuple), _tag, _anchor)


# Built once: a strategy made inside a draw is validated again at every draw, which is slow.
_SECTIONS = {name: _section(keys) for name, keys in SECTION_KEYS.items()}
_ANY_SECTION = _section(VOCABULARY)
_CHECK_EXTRAS = st.lists(st.tuples(scalars(st.sampled_from(SECTION_KEYS["check"])), _value),
                         max_size=3)
_CHECK_NAMES = scalars(st.sampled_from(["web", "db", "gw", "web", "a b", ""]))


@st.composite
def _check(draw: st.DrawFn) -> Node:
    kind = draw(st.sampled_from(sorted(KINDS)))
    spec = draw(_SECTIONS[kind])
    extra = draw(_CHECK_EXTRAS)
    name = draw(_CHECK_NAMES)
    return Map(((Scalar("name"), name), (Scalar(kind), spec), *extra), anchor=draw(_anchor))


_ROUTE_NAMES = st.lists(st.sampled_from(["desk", "hook", "oncall"]), max_size=3)
_BACKENDS = st.sampled_from([*sorted(ROUTES), "nosuch"])


@st.composite
def _routes(draw: st.DrawFn) -> Node:
    pairs = []
    for name in draw(_ROUTE_NAMES):
        backend = draw(_BACKENDS)
        fields = draw(_SECTIONS.get(f"route:{backend}", _ANY_SECTION))
        body = Map(((Scalar("backend"), Scalar(backend)), *fields.pairs), anchor=fields.anchor)
        pairs.append((Scalar(name), body))
    return Map((*pairs,))


@st.composite
def laughs(draw: st.DrawFn) -> str:
    """A 'billion laughs': each level an anchored list of aliases of the level below."""
    levels = draw(st.integers(2, 12))
    fanout = draw(st.integers(2, 12))
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fanout) + "]"]
    for level in range(1, levels):
        below = ", ".join([f"*l{level - 1}"] * fanout)
        lines.append(f"l{level}: &l{level} [{below}]")
    target = draw(st.sampled_from(["agent: {name: *l%d}", "checks: *l%d", "defaults: *l%d"]))
    return "\n".join([*lines, target % (levels - 1)]) + "\n"


_WINDOWS = st.lists(_SECTIONS["maintenance"], max_size=2)
_CHECKS = st.lists(_check(), max_size=3)
_EXTRA_SECTIONS = st.lists(st.tuples(_keys_strategy, anything), max_size=2)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A whole file: a plausible skeleton of sections, or anything at all at the top."""
    if draw(st.integers(0, 9)) == 0:
        return emit_document(draw(anything))
    sections: list[tuple[Node, Node]] = []
    if draw(st.booleans()):
        sections.append((Scalar("agent"), draw(_SECTIONS["agent"])))
    if draw(st.booleans()):
        sections.append((Scalar("defaults"), draw(_SECTIONS["defaults"])))
    if draw(st.booleans()):
        sections.append((Scalar("ticketing"), Map(((Scalar("routes"), draw(_routes())),))))
    if draw(st.booleans()):
        sections.append((Scalar("maintenance"), Seq(tuple(draw(_WINDOWS)))))
    if draw(st.booleans()):
        sections.append((Scalar("checks"), Seq(tuple(draw(_CHECKS)))))
    sections += draw(_EXTRA_SECTIONS)
    order = draw(st.permutations(range(len(sections))))
    text = emit_document(Map(tuple(sections[i] for i in order)))
    if draw(st.integers(0, 15)) == 0:
        text = draw(laughs()) + text
    return text


@st.composite
def file_bytes(draw: st.DrawFn) -> bytes:
    """A document's bytes, now and then mangled: truncated, spliced with binary junk, or
    encoded as no YAML file is (invalid UTF-8, UTF-16, a lone surrogate)."""
    text = draw(documents())
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate stays: invalid UTF-8
    mangle = draw(st.integers(0, 11))
    if mangle == 0:
        data = data[: draw(st.integers(0, len(data)))]
    elif mangle == 1:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    elif mangle == 2:
        data = draw(st.binary(max_size=256))
    elif mangle == 3:
        data = text.encode("utf-16", "surrogatepass")
    elif mangle == 4:
        data = b"\xef\xbb\xbf" + data  # a UTF-8 byte order mark
    return data


def plain(value: Any) -> bool:
    """Whether `value` holds only what safe YAML builds: no object of a Python class."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return value is None or type(value).__module__ in ("builtins", "datetime")
