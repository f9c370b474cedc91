"""Requests checked against a vendor's published OpenAPI 3.0 description: the operation is found
by method and path template, then the path and query parameters and the JSON body are validated
against what the operation declares ($refs resolved, OpenAPI's `nullable` understood), and a
body property the operation does not declare is reported too (GitHub ignores those silently).

GitHub's description comes from the npm package @octokit/openapi, installed outside the
package: `npm install --prefix .cache/octokit @octokit/openapi` (or set GITHUB_OPENAPI to the
file).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[2]
GITHUB_PACKAGE = "@octokit/openapi"
GITHUB_FILE = "generated/api.github.com.json"
INSTALL_GITHUB = f"npm install --prefix .cache/octokit {GITHUB_PACKAGE}"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as the API's server sees it, without a base path
    query: Sequence[tuple[str, str]] = ()
    body: Any = None  # the parsed JSON body; None when there is none
    has_body: bool = False
    content_type: str | None = None

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.method} {self.path}" + (f"?{query}" if query else "")


@dataclass
class _Operation:
    template: str
    spec: dict[str, Any]
    path_parameters: list[dict[str, Any]] = field(default_factory=list)


class OpenApi:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._paths: list[tuple[re.Pattern[str], list[str], int, str]] = []
        for template in spec.get("paths", {}):
            parts = re.split(r"(\{[^}]+\})", template)
            names = [part[1:-1] for part in parts if part.startswith("{")]
            pattern = "".join("([^/]+)" if part.startswith("{") else re.escape(part)
                              for part in parts)
            literal = len(re.sub(r"\{[^}]+\}", "", template))
            self._paths.append((re.compile(pattern + "$"), names, literal, template))
        self._resolved: dict[str, Any] = {}

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        """(template, operation, path values) of the operation that serves `method path`; the
        template with the most literal text wins, as servers route."""
        found = []
        for pattern, names, literal, template in self._paths:
            match = pattern.match(path)
            if match and method.lower() in self.spec["paths"][template]:
                found.append((literal, template, dict(zip(names, match.groups(), strict=True))))
        if not found:
            raise LookupError(f"{method} {path}: no such operation in the description")
        _, template, values = max(found, key=lambda item: item[0])
        return template, self.spec["paths"][template][method.lower()], values

    def violations(self, request: Request) -> list[str]:
        """What in `request` the description does not allow; empty when it conforms."""
        try:
            template, operation, values = self.operation(request.method, request.path)
        except LookupError as err:
            return [str(err)]
        where = f"{request} ({operation.get('operationId', template)})"
        problems: list[str] = []
        shared = self.spec["paths"][template].get("parameters", [])
        parameters = [self.resolve(p) for p in [*shared, *operation.get("parameters", [])]]
        declared = {(p["in"], p["name"]): p for p in parameters}
        query: dict[str, list[str]] = {}
        for name, value in request.query:
            query.setdefault(name, []).append(value)
        for name, given in values.items():
            problems += self._parameter(declared.get(("path", name)), "path", name, given)
        for name, given_values in query.items():
            for given in given_values:
                problems += self._parameter(declared.get(("query", name)), "query", name, given)
        for (place, name), parameter in declared.items():
            if place == "query" and parameter.get("required") and name not in query:
                problems.append(f"query parameter {name!r} is required")
        problems += self._body(operation, request)
        return [f"{where}: {problem}" for problem in problems]

    def _parameter(
        self, parameter: dict[str, Any] | None, place: str, name: str, given: str
    ) -> list[str]:
        if parameter is None:
            return [f"{place} parameter {name!r} is not declared"]
        schema = parameter.get("schema", {})
        value = _coerce(given, schema)
        return [f"{place} parameter {name}={given!r}: {message}"
                for message in _errors(schema, value)]

    def _body(self, operation: dict[str, Any], request: Request) -> list[str]:
        declared = operation.get("requestBody")
        if declared is None:
            return ["sends a body the operation does not take"] if request.has_body else []
        declared = self.resolve(declared)
        if not request.has_body:
            return ["the operation requires a body"] if declared.get("required") else []
        media = (request.content_type or "").split(";")[0].strip()
        content = declared.get("content", {})
        if media not in content:
            return [f"body of type {media!r}, the operation takes {', '.join(content)}"]
        schema = content[media].get("schema", {})
        problems = [f"body: {message}" for message in _errors(schema, request.body)]
        properties = schema.get("properties")
        if isinstance(request.body, dict) and isinstance(properties, dict):
            problems += [f"body property {name!r} is not declared"
                         for name in request.body if name not in properties]
        return problems

    def resolve(self, node: Any, seen: tuple[str, ...] = ()) -> Any:
        """`node` with every local $ref replaced by what it points at, and `nullable: true`
        spelled as JSON Schema says it."""
        if isinstance(node, list):
            return [self.resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in seen:
                return {}  # a recursive schema: deep enough for a request
            if ref not in self._resolved:
                target: Any = self.spec
                for part in ref.removeprefix("#/").split("/"):
                    target = target[part.replace("~1", "/").replace("~0", "~")]
                self._resolved[ref] = self.resolve(target, (*seen, ref))
            resolved: Any = self._resolved[ref]
            return resolved
        result = {key: self.resolve(value, seen) for key, value in node.items()}
        if result.pop("nullable", False) is True:
            return {"anyOf": [result, {"type": "null"}]}
        return result


def _coerce(given: str, schema: Mapping[str, Any]) -> Any:
    """A query or path string as the type its schema declares, when it reads as one."""
    kind = schema.get("type")
    if kind == "integer" and re.fullmatch(r"-?\d+", given):
        return int(given)
    if kind == "number":
        try:
            return float(given)
        except ValueError:
            return given
    if kind == "boolean" and given in ("true", "false"):
        return given == "true"
    if kind == "array":
        return given.split(",")
    return given


def _errors(schema: Mapping[str, Any], value: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or 'value'}: {e.message}"
            for e in validator.iter_errors(value)]


def github_description() -> Path | None:
    """Where GitHub's description is, if it is installed."""
    configured = os.environ.get("GITHUB_OPENAPI")
    candidates = [Path(configured)] if configured else []
    candidates.append(ROOT / ".cache/octokit/node_modules" / GITHUB_PACKAGE / GITHUB_FILE)
    return next((path for path in candidates if path.is_file()), None)


@functools.cache
def load(path: Path) -> OpenApi:
    with path.open(encoding="utf-8") as file:
        spec: dict[str, Any] = json.load(file)
    return OpenApi(spec)
