"""The effective configuration as YAML: what `probe validate --print` shows.

`effective_yaml(config, sources)` writes a loaded `Config` back out as a configuration that
`probe validate` accepts and that loads to the same checks: conf.d files merged, `<<:` merge
keys and `x-` templates expanded (the loader already did both), and every check with the
`defaults` it inherits written into it, so that an operator reads each check's real values.

It is written from the models alone. They hold secrets only as references (`env:NAME`, a
`*_file` path, `headers_file`), and nothing here reads one, so no secret value can be printed.

Durations and percentages are written in probe's own syntax (`30s`, `1h`, `500ms`, `20%`), and
always so that they read back as exactly the value loaded: `format_duration` rounds for
display (1.5ms prints as 2ms), which would change a check's meaning here.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from checks import KINDS
from checks.values import format_duration, parse_duration, parse_percent
from probe.config import Check, CheckBase, Config, Defaults, Ticketing

# Where the reference file (config/probe.example.yaml) puts a key other than where its model
# declares it: a route's backend first; a section's long blocks after its short settings.
_FIRST = ("backend",)
_LAST: dict[type[BaseModel], tuple[str, ...]] = {Ticketing: ("routes",), CheckBase: tuple(KINDS)}


def effective_yaml(config: Config, sources: Sequence[Path] = ()) -> str:
    """`config` as YAML, after a comment line naming the files it was read from."""
    dumped = config.model_dump(mode="json", by_alias=True)
    data = _model(config, dumped, skip={"checks"})
    checks = [_check(c, run, config.defaults)
              for c, run in zip(config.checks, config.effective_checks(), strict=True)]
    if checks:
        data["checks"] = checks
    shown = ", ".join(_shown(path) for path in sources)
    header = f"# probe validate --print: the effective configuration{' of ' if shown else ''}"
    # A blank line between the top-level sections, as in the reference file.
    sections = [_dump({key: value}) for key, value in data.items()]
    return f"{header}{shown}\n\n" + "\n".join(sections)


@functools.lru_cache(maxsize=4096)  # 10,000 checks share a few dozen values
def duration_text(seconds: float) -> str:
    """`seconds` in probe's duration syntax, reading back as exactly `seconds`: format_duration's
    spelling where that is exact (`1h30m`), else the fewest digits in one unit (`1.5ms`)."""
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1), ("ms", 0.001))
    return _exact(seconds, format_duration(seconds), parse_duration,
                  [(unit, seconds / size) for unit, size in units])


@functools.lru_cache(maxsize=4096)
def percent_text(fraction: float) -> str:
    """`fraction` as a percentage (`20%`) that reads back as exactly `fraction`, as every
    percentage the loader made does (some fractions are no percentage divided by 100)."""
    return _exact(fraction, f"{fraction * 100:g}%", parse_percent, [("%", fraction * 100)])


def _exact(value: float, shortest: str, parse: Callable[[object], float],
           numbers: list[tuple[str, float]]) -> str:
    """`shortest` if it reads back as `value`, else the shortest of `numbers` (each `value` in
    a unit) that does."""
    if _reads(parse, shortest, value):
        return shortest
    found = []
    for unit, number in numbers:
        # The number was scaled by a float (0.001, 100): the one the user wrote may be an ulp
        # or two off it, and its repr then the digits they wrote.
        near, up, down = [number], number, number
        for _ in range(2):
            up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
            near += [up, down]
        texts = (*(f"{number:.{digits}g}" for digits in range(1, 18)), *map(repr, near))
        exact = (text for text in (_decimal(t) + unit for t in texts) if _reads(parse, text, value))
        found += [min(exact, key=len, default="")]
    # The first of the shortest: the larger unit. Seconds' repr always reads back exactly.
    return min(filter(None, found), key=len, default=shortest)


def _reads(parse: Callable[[object], float], text: str, value: float) -> bool:
    try:
        return parse(text) == value
    except ValueError:  # format_duration writes a nanosecond as 1e-06ms
        return False


def _decimal(number: str) -> str:
    """`1.5e-05` as probe's durations and percentages take it: `0.000015`."""
    return format(Decimal(number), "f")


def _check(check: CheckBase, run: Check, defaults: Defaults) -> dict[str, Any]:
    """A check with every key it inherits from `defaults` written out, as it runs."""
    inherited = {name: getattr(run, name) for name in Defaults.model_fields}
    effective = check.model_copy(update=inherited)
    dumped = effective.model_dump(mode="json", by_alias=True)
    # A key left out of a check's ticket or flapping block takes the defaults' value, not the
    # model's: only what equals the defaults' may be left out.
    return _model(effective, dumped, inherits={"flapping": defaults.flapping,
                                               "ticket": defaults.ticket})


def _model(model: BaseModel, dumped: dict[str, Any], *, like: BaseModel | None = None,
           inherits: Mapping[str, BaseModel] | None = None,
           skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The keys of `model` as plain YAML data, from its JSON dump (`dumped`), which has the
    aliases (`from`) and the models' own spelling of paths, datetimes and regexes.

    A key whose value is nothing (null, empty) is left out where leaving it out gives the same
    value: the model's default, or `like`'s value where the key is inherited from `like`."""
    fields = type(model).model_fields
    out: dict[str, Any] = {}
    for name in _order(type(model)):
        if name in skip:
            continue
        field = fields[name]
        key = field.serialization_alias or field.alias or name
        value = getattr(model, name)
        if like is not None:
            left_out = getattr(like, name)
        else:
            left_out = field.get_default(call_default_factory=True)
        if _nothing(value) and value == left_out:
            continue
        parent = (inherits or {}).get(name)
        if parent is not None and isinstance(value, BaseModel):
            out[key] = _model(value, dumped[key], like=parent)
        else:
            out[key] = _plain(value, dumped[key])
    return out


def _plain(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel):
        return _model(value, dumped)
    if isinstance(value, Mapping):
        plain = {key: _plain(v, d) for (key, d), v in
                 zip(dumped.items(), value.values(), strict=True)}
        # A map of plain values on one line, as the reference file writes priorities
        return _Flow(plain) if plain and not any(map(_nested, plain.values())) else plain
    if isinstance(value, list | tuple):
        return [_plain(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, float) and isinstance(dumped, str):
        # A Duration or a Percent: their serializers round for display.
        if dumped.endswith("%"):
            return percent_text(value)
        if dumped == format_duration(value):
            return duration_text(value)
    if isinstance(value, dt.time):
        # As the reference file writes it: JSON's 02:00:00 is not a time the loader takes.
        return _Quoted(f"{value.hour:02d}:{value.minute:02d}")
    if isinstance(value, dt.datetime):
        return _Quoted(dumped)
    return dumped


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list)


def _nothing(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | dict) and not value)


@functools.cache
def _order(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys of `model` in the reference file's order: a model's own keys before those it
    inherits (a route's settings before those every route shares), with the exceptions
    `_FIRST` and `_LAST` name."""
    names = list(model.model_fields)
    ordered: list[str] = []
    for cls in model.__mro__:
        declared = vars(cls).get("__annotations__", {})
        ordered += [n for n in names if n in declared and n not in ordered]
    ordered += [n for n in names if n not in ordered]
    last = next((keys for cls, keys in _LAST.items() if issubclass(model, cls)), ())
    first = [n for n in _FIRST if n in ordered]
    middle = [n for n in ordered if n not in first and n not in last]
    return (*first, *middle, *[n for n in last if n in ordered])


def _shown(path: Path) -> str:
    # A file name with a line break must not end the comment and start a key.
    text = str(path)
    return text if text.isprintable() else json.dumps(text, ensure_ascii=False)


try:  # libyaml's emitter: 10,000 checks print in a second, not in ten
    from yaml import CSafeDumper as _Emitting
except ImportError:  # a PyYAML built without it
    from yaml import SafeDumper as _Emitting  # type: ignore[assignment]


class _Quoted(str):
    """A string written in double quotes, as the reference file writes a time of day."""

    __slots__ = ()


class _Flow(dict[str, Any]):
    """A map written on one line (`{urgent: 99, high: 75}`)."""

    __slots__ = ()


class _Dumper(_Emitting):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &anchors: the output shows each value where it applies


def _list(dumper: _Dumper, data: list[Any]) -> yaml.Node:
    flow = not any(map(_nested, data))  # [200], [probe, outage]
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _flow(dumper: _Dumper, data: _Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)


def _str(dumper: _Dumper, data: str) -> yaml.Node:
    # A template of several lines as a literal block (the emitter quotes it where it cannot).
    return dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                   style="|" if "\n" in data else None)


def _quoted(dumper: _Dumper, data: _Quoted) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


_Dumper.add_representer(list, _list)
_Dumper.add_representer(str, _str)
_Dumper.add_representer(_Quoted, _quoted)
_Dumper.add_representer(_Flow, _flow)


def _dump(data: dict[str, Any]) -> str:
    # Wide lines: a long URL or description stays on one line, where grep finds it.
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=10_000)
