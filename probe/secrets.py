"""Secrets in the configuration: never inline, only `NAME_file` paths or `env:NAME` references.

A route declares each secret as two optional fields, `token` (which only takes `env:NAME`) and
`token_file`; `Secrets.reveal("token")` reads it when a backend needs it, never at load time,
so that `probe validate` works without the credentials at hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import AfterValidator, ValidationInfo, model_validator

from checks.base import StrictModel

_ENV_REF = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")


def _env_ref(value: str, info: ValidationInfo) -> str:
    if not _ENV_REF.fullmatch(value):
        raise ValueError(
            f"inline secrets are not allowed: write env:NAME, or put it in a file and set "
            f"{info.field_name}_file"
        )
    return value


EnvRef = Annotated[str, AfterValidator(_env_ref)]


class SecretError(Exception):
    """A secret named in the configuration cannot be read now."""


class Secrets(StrictModel):
    """Base of models that hold secrets. `secrets` names them, and whether each is required."""

    secrets: ClassVar[dict[str, bool]] = {}

    @model_validator(mode="after")
    def _one_source_each(self) -> Secrets:
        for name, required in self.secrets.items():
            inline, file = getattr(self, name), getattr(self, f"{name}_file")
            if inline is not None and file is not None:
                raise ValueError(f"set {name} or {name}_file, not both")
            if required and inline is None and file is None:
                raise ValueError(f"needs {name}_file (or {name}: env:NAME)")
        return self

    def has_secret(self, name: str) -> bool:
        return getattr(self, name) is not None or getattr(self, f"{name}_file") is not None

    def reveal(self, name: str) -> str:
        ref: str | None = getattr(self, name)
        file: Path | None = getattr(self, f"{name}_file")
        if ref is not None:
            var = ref.removeprefix("env:")
            value = os.environ.get(var)
            if value is None:
                raise SecretError(f"{name}: environment variable {var} is not set")
            return value
        if file is not None:
            try:
                return file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise SecretError(f"{name}_file: cannot read {file}: {err.strerror}") from None
        raise SecretError(f"{name} is not configured")
