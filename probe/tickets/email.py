"""The email backend: one mail thread per incident, for email-to-ticket helpdesks."""

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from probe.secrets import EnvRef
from probe.tickets.base import RouteBase


def _address(value: str) -> str:
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", value):
        raise ValueError(f"{value!r} is not an email address")
    return value


def _host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (like smtp.example.net:587)")
    return value


Address = Annotated[str, AfterValidator(_address)]


class Route(RouteBase):
    backend: Literal["email"]
    smtp: Annotated[str, AfterValidator(_host_port)]
    starttls: bool = True
    tls: bool = False  # implicit TLS from the first byte (port 465)
    username: str | None = None
    password: EnvRef | None = None
    password_file: Path | None = None
    from_: Address = Field(alias="from")
    to: list[Address] = Field(min_length=1)
    cc: list[Address] = []

    secrets: ClassVar[dict[str, bool]] = {"password": False}

    @model_validator(mode="after")
    def _auth(self) -> "Route":
        if self.username and not self.has_secret("password"):
            raise ValueError("username is set: needs password_file (or password: env:NAME)")
        if self.tls and self.starttls:
            raise ValueError("set tls (implicit, port 465) or starttls, not both")
        return self
