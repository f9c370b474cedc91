"""The layers of ARCHITECTURE.md, read from the source: every import of a probe or checks module
points to its own layer or one below, none is hidden in a function or behind TYPE_CHECKING, and
the modules import each other in no cycle."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

from tests.harness.proc import REPO

# Lowest first. A module may import its own layer and those below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("checks", ("checks", "checks.*")),
    ("foundation", ("probe", "probe.log", "probe.yamlpos", "probe.sdnotify", "probe.version",
                    "probe.secrets", "probe.configerrors", "probe.control", "probe.facts")),
    ("helpdesks", ("probe.helpdesks", "probe.helpdesks.*")),
    ("configuration", ("probe.webconfig", "probe.config", "probe.effective")),
    ("core", ("probe.engine", "probe.store", "probe.state", "probe.scheduler", "probe.metrics",
              "probe.supervisor", "probe.tickets", "probe.tickets.render", "probe.tickets.triage",
              "probe.tickets.ledger", "probe.tickets.pgledger",
              "probe.tickets.pool", "probe.tickets.watcher",
              "probe.tickets.groups", "probe.tickets.outbox", "probe.writer",
              "probe.cluster", "probe.cluster.*", "probe.history", "probe.pages.model",
              "probe.alerts")),
    ("service", ("probe.status", "probe.web", "probe.daemon", "probe.demo",
                 "probe.tickets.admin", "probe.pages", "probe.pages.*", "probe.availability",
                 "probe.archive", "probe.report")),
    ("command", ("probe.cli", "probe.__main__")),
]


def modules() -> dict[str, Path]:
    found = {}
    for package in ("probe", "checks"):
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def layer(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def imported(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The probe and checks modules an import statement loads: `from probe import control`
    is probe.control, `from probe import __version__` is probe."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    base = node.module or ""
    found = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    if base in MODULES and len(found) < len(node.names):
        found.add(base)
    return found


def imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """The modules imported at the top of the file, and (line, module) for each one imported
    anywhere else (a function, a class, an `if TYPE_CHECKING:` block)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top |= imported(node)
    hidden = [(node.lineno, name) for node in ast.walk(tree)
              if isinstance(node, ast.Import | ast.ImportFrom) and node not in tree.body
              for name in sorted(imported(node))]
    return top, hidden


GRAPH = {name: imports(path)[0] - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_points_to_its_own_layer_or_below(module: str) -> None:
    rank = layer(module)
    upward = sorted(f"{target} ({LAYERS[layer(target)][0]})" for target in GRAPH[module]
                    if layer(target) > rank)
    assert upward == [], f"{module} ({LAYERS[rank][0]}) imports upward"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_probe_module_is_imported_inside_a_function_or_a_type_checking_block(
    module: str,
) -> None:
    assert imports(MODULES[module])[1] == []


def test_the_modules_import_each_other_in_no_cycle() -> None:
    state: dict[str, int] = {}  # 1 on the path being walked, 2 done
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_the_layer_test_sees_an_upward_import() -> None:
    # a test that cannot fail is no test: the engine importing the daemon would be caught
    assert layer("probe.daemon") > layer("probe.engine")
    assert "probe.store" in GRAPH["probe.daemon"]
