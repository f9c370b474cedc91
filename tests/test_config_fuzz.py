"""The configuration loader against hostile files: whatever the bytes, `probe.config.load`
returns a Config or raises ConfigError whose every issue reads `file:line: path: message`,
in bounded time, and never builds a Python object a file names.

The examples are derandomized so that CI is stable; PROBE_FUZZ_EXAMPLES=20000 searches longer,
with new random examples each time.
"""

from __future__ import annotations

import os
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.config import Config, ConfigError, ConfigIssue, load
from probe.yamlpos import MAX_EXPANDED, YamlError, load_with_positions
from tests.harness.hostile_yaml import documents, file_bytes, laughs, plain

EXAMPLES = int(os.environ.get("PROBE_FUZZ_EXAMPLES", "300"))
LONG = "PROBE_FUZZ_EXAMPLES" in os.environ  # a longer search explores new examples each time
SECONDS = 2.0  # per example: far above what any of them takes
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not LONG,
    database=None,
    deadline=None,  # timed below, with a bound that means "did not blow up"
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)
# Problems with the file as a whole, which no line can be blamed for.
FILE_LEVEL = ("is not UTF-8 text", "cannot read", "no *.yaml files", "no such file")


def load_timed(path: Path) -> tuple[Config | None, list[ConfigIssue], float]:
    started = time.perf_counter()
    try:
        config, issues = load(path), []
    except ConfigError as err:
        config, issues = None, err.issues
    return config, issues, time.perf_counter() - started


def assert_well_formed(issues: list[ConfigIssue], files: list[Path]) -> None:
    names = {str(f) for f in files}
    for issue in issues:
        assert issue.file in names or Path(issue.file).is_file(), issue  # or a file it names
        assert issue.message and "\n" not in str(issue), issue
        if any(phrase in issue.message for phrase in FILE_LEVEL):
            assert str(issue) == f"{issue.file}: {issue.message}"
            continue
        assert issue.line >= 1, issue
        where = f"{issue.file}:{issue.line}"
        expected = f"{where}: {issue.path}: {issue.message}" if issue.path else \
            f"{where}: {issue.message}"
        assert str(issue) == expected


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


# --- the properties ------------------------------------------------------------------------


@FUZZ
@given(data=file_bytes())
def test_any_file_loads_or_gives_errors_with_file_line_and_path(
    tmp_path: Path, data: bytes
) -> None:
    path = write(tmp_path, "probe.yaml", data)
    config, issues, took = load_timed(path)
    assert took < SECONDS
    assert config is not None or issues
    assert_well_formed(issues, [path])


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))  # up to three files each
@given(files=st.lists(file_bytes(), min_size=1, max_size=3))
def test_any_conf_d_directory_loads_or_gives_errors_with_file_line_and_path(
    tmp_path: Path, files: list[bytes]
) -> None:
    directory = tmp_path / "conf.d"
    directory.mkdir(exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    paths = [write(directory, f"{i}0-part.yaml", data) for i, data in enumerate(files)]
    config, issues, took = load_timed(directory)
    assert took < SECONDS
    assert config is not None or issues
    assert_well_formed(issues, paths)


@FUZZ
@given(text=documents())
def test_the_yaml_layer_builds_plain_data_or_names_a_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "probe.yaml", text.encode("utf-8", "surrogatepass"))
    try:
        data, positions = load_with_positions(path)
    except YamlError as err:
        assert err.file == str(path)
        assert err.message and err.line >= 0
        return
    assert plain(data)
    assert all(where == (str(path), where[1]) and where[1] >= 1 for where in positions.values())


# --- files built to hurt, one at a time ----------------------------------------------------


def only_issue(path: Path) -> str:
    config, issues, took = load_timed(path)
    assert took < SECONDS
    assert config is None and len(issues) == 1, issues
    assert_well_formed(issues, [path])
    return str(issues[0])


def test_a_billion_laughs_is_refused_without_expanding_it(tmp_path: Path) -> None:
    levels = "\n".join(
        f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}" if n else "lol"] * 10) + "]"
        for n in range(10)
    )
    path = write(tmp_path, "laughs.yaml", f"{levels}\nagent: {{name: *l9}}\n".encode())
    tracemalloc.start()
    try:
        message = only_issue(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message.startswith(f"{path}:")
    assert message.endswith(f": invalid YAML: aliases expand to more than {MAX_EXPANDED} values")
    assert peak < 200 * 1024 * 1024


@settings(FUZZ, max_examples=max(EXAMPLES // 15, 20))  # each one builds up to MAX_EXPANDED
@given(text=laughs())
def test_every_alias_bomb_is_refused_or_loaded_in_bounded_time(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "laughs.yaml", text.encode())
    _, issues, took = load_timed(path)
    assert took < SECONDS
    assert_well_formed(issues, [path])


def test_an_alias_inside_its_own_anchor_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "loop.yaml", b"agent: &a {name: x, state_dir: [*a]}\n")
    assert only_issue(path) == (
        f"{path}:1: agent.state_dir[0]: an alias refers to a value that contains it"
    )


def test_a_merge_key_that_merges_itself_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "merge.yaml", b"defaults: &d {<<: *d, interval: 5s}\n")
    assert only_issue(path).startswith(f"{path}:1: defaults")


def test_nesting_deeper_than_python_can_follow_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "deep.yaml", b"agent: " + b"[" * 5000 + b"]" * 5000 + b"\n")
    assert only_issue(path) == f"{path}:1: invalid YAML: nested too deeply"


def test_python_objects_are_never_built(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = write(tmp_path, "evil.yaml",
                 f"agent: !!python/object/apply:os.system ['touch {marker}']\n".encode())
    assert only_issue(path) == (
        f"{path}:1: agent: the tag !!python/object/apply:os.system is not allowed here"
    )
    path = write(tmp_path, "evil.yaml", f"agent: {{name: !!python/object/apply:os.system "
                 f"'touch {marker}'}}\n".encode())
    assert "could not determine a constructor" in only_issue(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1: x\n", "1: 1: unknown key"),
        ("yes: x\n", "1: yes: unknown key"),
        (".nan: x\n", "1: .nan: unknown key"),
        ("agent: {name: x}\nagent: {name: y}\n", "2: agent: duplicate key"),
        ("agent: {history: " + "9" * 5000 + "}\n",
         "1: agent.history: '9999999999999999999999999999999999999...' is not a valid !!int"),
        ("agent: {name: !!timestamp 2026-02-30}\n",
         "1: agent.name: '2026-02-30' is not a valid !!timestamp"),
        ("agent: {name: !!bool maybe}\n", "1: agent.name: 'maybe' is not a valid !!bool"),
        ("agent: !!set {name}\n", "1: agent: the tag !!set is not allowed here"),
        ("agent: !custom {name: x}\n", "1: agent: the tag !custom is not allowed here"),
        ("agent:\n  name: x\n  \x00\n", "3: invalid YAML: character #x0000 is not allowed "
         "(is this a text file?)"),
        ("defaults: {timeout: " + "9" * 400 + "y}\n",
         "1: defaults.timeout: 99999999999999999999... is too long a duration"),
        ("checks: [{name: a, http: {url: 'http://127.0.0.1/', ca_file: '" + "x" * 5000 + "'}}]\n",
         "is not a readable file"),
    ],
    ids=["int-key", "bool-key", "nan-key", "duplicate", "4301-digits", "30-february",
         "bad-bool", "set-tag", "local-tag", "nul-byte", "infinite-duration", "long-path"],
)
def test_each_hostile_value_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "probe.yaml", text.encode())
    issue = only_issue(path)
    assert message in issue
    assert issue.startswith(f"{path}:")


def test_a_file_that_is_not_utf8_is_named_without_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "latin1.yaml", "agent: {name: caf\u00e9}\n".encode("latin-1"))
    assert only_issue(path) == f"{path}: is not UTF-8 text"


def test_a_dependency_chain_longer_than_python_s_stack_loads(tmp_path: Path) -> None:
    checks = "".join(f"  - {{name: c{i}, depends_on: [c{i + 1}], tcp: {{host: h, port: 1}}}}\n"
                     for i in range(3000))
    path = write(tmp_path, "chain.yaml",
                 f"checks:\n{checks}  - {{name: c3000, tcp: {{host: h, port: 1}}}}\n".encode())
    config = load(path)
    assert len(config.checks) == 3001


def test_a_dependency_cycle_through_a_long_chain_is_named_once(tmp_path: Path) -> None:
    checks = "".join(f"  - {{name: c{i}, depends_on: [c{(i + 1) % 2000}], tcp: {{host: h, "
                     f"port: 1}}}}\n" for i in range(2000))
    path = write(tmp_path, "cycle.yaml", f"checks:\n{checks}".encode())
    message = only_issue(path)
    assert re.search(r"checks\[0\]\.depends_on: dependency cycle: c0 -> c1 -> .* -> c1999 -> c0$",
                     message), message[:200]


def test_a_conf_d_list_section_after_a_scalar_one_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "00-a.yaml", b"checks: 5\n")
    write(tmp_path, "10-b.yaml", b"checks: [{name: a, tcp: {host: h, port: 1}}]\n")
    _, issues, _ = load_timed(tmp_path)
    assert [str(i) for i in issues] == [
        f"{tmp_path}/00-a.yaml:1: checks: expected a list, got 5",
        f"{tmp_path}/10-b.yaml:1: checks: also set at {tmp_path}/00-a.yaml:1: set it in one file",
    ]


def test_a_large_configuration_without_aliases_is_not_limited(tmp_path: Path) -> None:
    checks = "".join(f"  - {{name: c{i}, interval: 10s, tcp: {{host: 127.0.0.1, port: 9}}}}\n"
                     for i in range(12_000))
    path = write(tmp_path, "large.yaml", f"checks:\n{checks}".encode())
    assert len(load(path).checks) == 12_000
