"""Checks of the `hermesflow` command line's options, shared by its commands.

Each check turns a value that cannot work into a usage error — exit 2, "Invalid value for
'--name': <what is wrong and what to give>" — before the command starts anything (Ray above
all), instead of a traceback from deep inside. They are typer option callbacks: typer calls an
option's `callback` with the converted value, and a `typer.BadParameter` raised there is
reported against that option. So a command declares its checks beside its options:

    apps: Annotated[int, typer.Option(callback=SIMULATED_APPS)] = 500

- `Bounds`: a number within bounds; a float must also be finite (click's FloatRange lets `nan`
  through, since every comparison with nan is false);
- `OneOf`: a name from a registry (policies, planners);
- `existing_file`, `http_url`, `not_blank`, `database_url`: a file, an http(s) base URL, a
  name, a SQLAlchemy URL of a known dialect;
- `check_can_listen(host, port)`: the one check that looks at the machine (is the port free?),
  called by `serve` before Ray starts.

Caps (`MAX_SIMULATED_APPS`, `LOAD`) say in their docstrings why they are where they are.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import typer

MAX_SIMULATED_APPS = 10_000
"""Applications per simulated run. The simulator's time grows faster than the count, because
queues grow near saturation: on 2 cores 2,000 applications took 8 s, 5,000 38 s, 10,000 about
two minutes and 20,000 nine. For larger samples, run several seeds."""


@dataclass(frozen=True)
class Bounds:
    """An option callback: the value (int or float) must lie within [low, high] (`low_open`:
    strictly above low); None passes (an unset optional option). `why` says what the bounds are
    for, and ends the error message."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    why: str = ""

    def __call__(self, value: float | None) -> float | None:
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self._fail(f"{value} is not a finite number")
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            self._fail(f"{_number(value)} is out of range")
        return value

    @property
    def described(self) -> str:
        """The range in words, e.g. 'above 0 and at most 100'."""
        parts = []
        if self.low is not None:
            bound = _number(self.low)
            parts.append(f"above {bound}" if self.low_open else f"at least {bound}")
        if self.high is not None:
            parts.append(f"at most {_number(self.high)}")
        return " and ".join(parts)

    def _fail(self, problem: str) -> NoReturn:
        reason = f" ({self.why})" if self.why else ""
        raise typer.BadParameter(f"{problem}; give a value {self.described}{reason}")


def _number(value: float) -> str:
    """An integral value without a decimal point or exponent, any other as `%g`."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Bounds(low=0, low_open=True)
AT_LEAST_ONE = Bounds(low=1)
NOT_NEGATIVE = Bounds(low=0)
SIMULATED_APPS = Bounds(
    low=1,
    high=MAX_SIMULATED_APPS,
    why="the simulator's time grows faster than the count; run several seeds for more",
)
LOAD = Bounds(
    low=0.01,
    high=100,
    why="1.0 offers as much LLM work as the engine serves; below 0.01 queues are empty and the "
    "simulated time grows without bound, above 100 every application arrives at once",
)
PORT = Bounds(low=0, high=65535, why="0 picks a free port")
SEED = Bounds(low=0, why="numpy seeds are non-negative")


@dataclass(frozen=True)
class OneOf:
    """An option callback: the value is one of `names` (a registry's keys); `what` names the
    kind of thing in the error, e.g. 'policy'."""

    what: str
    names: tuple[str, ...]

    def __call__(self, value: str) -> str:
        if value not in self.names:
            raise typer.BadParameter(
                f"unknown {self.what} {value!r}; choose one of: {', '.join(self.names)}"
            )
        return value


def existing_file(path: Path | None) -> Path | None:
    """An option callback: `path` is a readable file (not a folder)."""
    if path is None:
        return None
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a folder; give a file")
    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file")
    return path


def http_url(url: str) -> str:
    """An option callback: an http(s) base URL with a host, e.g. http://127.0.0.1:8000."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as error:  # a port that is not a number, or out of range
        raise typer.BadParameter(f"{url!r} is not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise typer.BadParameter(
            f"{url!r} is not an http(s) URL; give the API's base URL, e.g. http://127.0.0.1:8000"
        )
    return url


def database_url(url: str | None) -> str | None:
    """An option callback: a SQLAlchemy URL whose dialect and driver are installed, e.g.
    sqlite:///h.db or postgresql+psycopg://user@host/db (checked here, not when the scheduler
    first opens it)."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as error:
        raise typer.BadParameter(
            f"{url!r} is not a usable database URL ({error}); give a SQLAlchemy URL such as "
            "sqlite:///hermesflow.db or postgresql+psycopg://user@host:5432/hermes"
        ) from None
    return url


def not_blank(name: str) -> str:
    """An option callback: a name that is not empty or only spaces."""
    if not name.strip():
        raise typer.BadParameter("give a name that is not empty")
    return name


def check_can_listen(host: str, port: int) -> None:
    """Bind `host:port` for a moment, as the gateway will: a port in use, or an address that is
    not this machine's, becomes a usage error naming the option to change (port 0, any free
    port, checks the address alone). The gateway binds again later; losing a race in between
    is reported then, in one line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as error:
        # create_server appends the address to strerror; a name lookup's errno is negative
        positive = error.errno is not None and error.errno > 0
        reason = os.strerror(error.errno) if positive else (error.strerror or str(error))
        if error.errno in (errno.EADDRINUSE, errno.EACCES):
            raise typer.BadParameter(
                f"cannot listen on {host}:{port} ({reason}); choose another port (0: any free "
                "one) or stop what uses it",
                param_hint="--port",
            ) from None
        raise typer.BadParameter(
            f"cannot listen on {host}:{port} ({reason}); give an address of this machine, "
            "e.g. 127.0.0.1 or 0.0.0.0",
            param_hint="--host",
        ) from None
