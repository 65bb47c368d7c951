"""`CodeExecutor`: runs model-written Python in a throwaway subprocess without network.

One tool, `run_python(source, stdin="", files={})`, returns `{"returncode", "stdout",
"stderr", "timed_out"}`. Each call:

1. makes a fresh temporary directory, writes `files` and the program (`main.py`) into it;
2. starts `python -I` (the `python` option, default this interpreter; isolated mode: no
   PYTHON* variables, no user site) in that directory, in a new session (its own process
   group), with a minimal environment, as `run_as` when Hermesflow runs as root;
3. the interpreter first runs a small bootstrap that sets resource limits (address space,
   CPU seconds, file size, open files, and processes when it runs as a dedicated user), in
   audit-hook mode installs the audit hook, then runs `main.py` as `__main__`;
4. on `timeout_s` the whole process group is killed; after the program ends, whatever it
   left in its group is killed too; the directory is removed.

Network isolation, chosen at `load` (`isolation` attribute, logged):

* "netns" — the program runs under `unshare --net --map-root-user`: a new user and network
  namespace with only a loopback device that is down, so no address is reachable, the host's
  127.0.0.1 included. Needs unprivileged user namespaces (or root).
* "audit-hook" — the fallback where `unshare` is missing or refused (e.g. a container's
  seccomp profile): a `sys.addaudithook` hook refuses socket connect/bind/send and name look-up,
  and starting processes (a child would not carry the hook).

What it does NOT protect against: the audit hook is no security boundary (PEP 578 says so):
native code — `ctypes`, a C extension — bypasses it. The file system is not isolated: the
program can read what its user can read, and write outside its directory what its user can
write; started as root, the program runs as `run_as` (default "nobody") only if that user can
run the interpreter, otherwise as root (logged as a warning). A process that leaves its
process group (setsid) in netns mode is not killed with it. Memory is bounded per process
(RLIMIT_AS), not in total, and the process limit (RLIMIT_NPROC) only applies when running as
a dedicated user, since it counts all processes of the user. CPU and wall time are bounded;
disk use only per file (RLIMIT_FSIZE). Use a container or a VM for hostile code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import pwd
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hermesflow.backends.calls import ToolCall
from hermesflow.backends.tools import ToolBackend, ToolOutput, ToolSignature

log = logging.getLogger(__name__)

Isolation = Literal["netns", "audit-hook"]

PROGRAM_NAME = "main.py"
"""The file the source is written to, inside the call's directory."""

MEMORY_LIMIT_BYTES = 1 << 30
"""Default address-space limit: room for numpy-sized work, not for a runaway allocation."""

FILE_SIZE_LIMIT_BYTES = 64 << 20
"""The largest file the program may write (RLIMIT_FSIZE): a full disk is everyone's problem."""

OPEN_FILES_LIMIT = 256
PROCESS_LIMIT = 64
"""RLIMIT_NPROC when running as a dedicated user: enough for a small pool, not a fork bomb."""

CPU_SLACK_S = 1
"""CPU seconds beyond the call's timeout before RLIMIT_CPU kills the program (a backstop for a
busy grandchild that outlives the kill; the wall-clock timeout is the real bound)."""

PIPE_DRAIN_S = 1.0
"""How long to keep reading output after the program ended, for pipes held by its children."""

PROBE_TIMEOUT_S = 30.0
"""Limit of the trial run at `load` that tells whether network namespaces work here."""

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

REFUSED_EVENTS = (
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.sendmsg",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "os.forkpty",
)
"""Audit events the fallback refuses: networking, and starting processes (which would run
without the hook)."""

REFUSAL = "this sandbox has no network and starts no programs"
"""Why a refused audit event raised PermissionError, as the program reads it."""

_BOOTSTRAP = """\
import json, os, resource, runpy, sys, traceback
_config = json.loads(sys.argv[1])
for _name, _value in _config["limits"].items():
    _kind = getattr(resource, _name)
    _hard = resource.getrlimit(_kind)[1]
    _value = _value if _hard == resource.RLIM_INFINITY else min(_value, _hard)
    resource.setrlimit(_kind, (_value, _value))
if _config["refuse"]:
    _refused = frozenset(_config["refuse"])
    def _audit(event, args):
        if event in _refused:
            raise PermissionError(f"{event} refused: {_config['refusal']}")
    sys.addaudithook(_audit)
_path = os.path.abspath(sys.argv[2])
sys.argv = sys.argv[2:]
sys.path.insert(0, os.getcwd())
try:
    runpy.run_path(_path, run_name="__main__")
except SystemExit:
    raise
except BaseException as _error:
    _tb = _error.__traceback__
    while _tb is not None and _tb.tb_frame.f_code.co_filename != _path:
        _tb = _tb.tb_next
    traceback.print_exception(type(_error), _error, _tb)
    sys.exit(1)
"""
"""Run by `python -I -c` before the program: limits, the audit hook, then `main.py` as
`__main__`, with a traceback that starts at the program's own frames."""


class RunPythonArgs(BaseModel):
    """The arguments of `run_python`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: str
    stdin: str = ""
    files: dict[str, str] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _relative_names(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            path = PurePosixPath(name)
            if not name or path.is_absolute() or ".." in path.parts or name in (".", PROGRAM_NAME):
                raise ValueError(
                    f"file name {name!r}: use a relative path inside the working directory, "
                    f"not {PROGRAM_NAME!r}, without '..'"
                )
        return files


RUN_PYTHON = ToolSignature.of_model(
    "run_python",
    RunPythonArgs,
    "Run a Python program (no network); returns its returncode, stdout, stderr and timed_out.",
)


@dataclass(frozen=True, slots=True)
class _SandboxUser:
    """The unprivileged user the program runs as when Hermesflow runs as root."""

    name: str
    uid: int
    gid: int

    def popen_options(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


class _CappedOutput:
    """Keeps the first `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.kept)
        self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        return text + (f"\n[... {self.dropped} more bytes cut]" if self.dropped else "")


class _ProgramProtocol(asyncio.SubprocessProtocol):
    """Collects the program's output, capped, and tells when it exited and when its pipes
    closed: two moments, since a child the program started can hold the pipes open after it
    exited (`asyncio.subprocess.Process.wait` waits for both, so it cannot tell)."""

    def __init__(self, max_output_bytes: int) -> None:
        loop = asyncio.get_running_loop()
        self.stdout = _CappedOutput(max_output_bytes)
        self.stderr = _CappedOutput(max_output_bytes)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._open_pipes = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        (self.stdout if fd == 1 else self.stderr).add(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class CodeExecutor(ToolBackend):
    """Python code execution in a subprocess without network (module docstring).

    Options: `workers` (capacity, default 2), `max_output_bytes` kept of stdout and of stderr
    (default 8 KiB each), `memory_bytes` (RLIMIT_AS, default 1 GiB), `isolation` ("auto": netns
    if it works here, else the audit hook; or insist on "netns" / "audit-hook"), `run_as` (the
    user to run as when started as root, default "nobody"; None keeps root), `python` (the
    interpreter, default this one: give one that `run_as` can execute, with the packages the
    programs may import).
    """

    type_name: ClassVar[str] = "code"

    def __init__(
        self,
        name: str,
        workers: int = 2,
        max_output_bytes: int = 8192,
        memory_bytes: int = MEMORY_LIMIT_BYTES,
        isolation: Literal["auto", "netns", "audit-hook"] = "auto",
        run_as: str | None = "nobody",
        python: str | None = None,
    ) -> None:
        super().__init__(name, capacity=workers)
        if isolation not in ("auto", "netns", "audit-hook"):
            raise ValueError(
                f"backend {name!r}: isolation {isolation!r}; use 'auto', 'netns' or 'audit-hook'"
            )
        if max_output_bytes < 1 or memory_bytes < 1:
            raise ValueError(
                f"backend {name!r}: max_output_bytes and memory_bytes must be positive"
            )
        self.max_output_bytes = max_output_bytes
        self.memory_bytes = memory_bytes
        self.requested_isolation = isolation
        self.run_as = run_as
        self.python = python or sys.executable
        self.isolation: Isolation | None = None
        """The isolation in force, known after `load`."""
        self._user: _SandboxUser | None = None
        self._unshare: str | None = None
        self._slots: asyncio.Semaphore | None = None

    @property
    def signatures(self) -> dict[str, ToolSignature]:
        return {RUN_PYTHON.name: RUN_PYTHON}

    @property
    def loaded(self) -> bool:
        return self._slots is not None

    @property
    def user(self) -> str:
        """Who the programs run as."""
        return self._user.name if self._user else pwd.getpwuid(os.geteuid()).pw_name

    async def load(self) -> None:
        """Choose the user and the isolation by trying them (module docstring)."""
        self._user = await self._choose_user()
        self.isolation = await self._choose_isolation()
        self._slots = asyncio.Semaphore(self.capacity)
        log.info(
            "backend %r: code runs as %s with isolation %s", self.name, self.user, self.isolation
        )

    async def unload(self) -> None:
        self._slots = None

    async def _choose_user(self) -> _SandboxUser | None:
        if os.geteuid() != 0 or self.run_as is None:
            return None
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            log.warning("backend %r: no user %r; code runs as root", self.name, self.run_as)
            return None
        user = _SandboxUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
        try:
            probe = await asyncio.create_subprocess_exec(
                self.python,
                "-I",
                "-c",
                "pass",
                cwd="/",
                stderr=asyncio.subprocess.PIPE,
                **user.popen_options(),
            )
            _, stderr = await probe.communicate()
            failure = stderr.decode(errors="replace").strip() if probe.returncode else None
        except OSError as error:
            failure = str(error)
        if failure is not None:
            log.warning(
                "backend %r: user %r cannot run %s (%s); code runs as root — install Python where "
                "that user can read it to drop privileges",
                self.name,
                self.run_as,
                self.python,
                failure,
            )
            return None
        return user

    async def _choose_isolation(self) -> Isolation:
        if self.requested_isolation == "audit-hook":
            return "audit-hook"
        self._unshare = shutil.which("unshare")
        failure = "the unshare command is not installed (util-linux)"
        if self._unshare is not None:
            try:
                probe = await self._execute(RunPythonArgs(source="pass"), PROBE_TIMEOUT_S, "netns")
                if probe["returncode"] == 0:
                    return "netns"
                failure = probe["stderr"].strip()
            except OSError as error:
                failure = str(error)
            failure = f"unshare --net --map-root-user failed: {failure}"
        if self.requested_isolation == "netns":
            raise RuntimeError(f"backend {self.name!r}: network namespaces unavailable: {failure}")
        log.warning(
            "backend %r: %s; falling back to the audit-hook sandbox (weaker)", self.name, failure
        )
        return "audit-hook"

    async def _invoke(self, call: ToolCall, signature: ToolSignature) -> ToolOutput:
        args = signature.parse(RunPythonArgs, call.args)
        assert self._slots is not None and self.isolation is not None
        async with self._slots:
            try:
                value = await self._execute(args, call.timeout_s, self.isolation)
            except OSError as error:
                return ToolOutput(error=f"run_python could not start the program: {error}")
        if value["timed_out"]:
            return ToolOutput(
                value=value,
                error=f"run_python timed out after {call.timeout_s:g} s; the program was killed",
            )
        return ToolOutput(value=value, text=_render(value))

    async def _execute(
        self, args: RunPythonArgs, timeout_s: float, isolation: Isolation
    ) -> dict[str, Any]:
        """Run one program in a fresh directory (module docstring, steps 1-4)."""
        workdir = Path(tempfile.mkdtemp(prefix="hermesflow-code-"))
        try:
            self._write_files(workdir, args)
            transport, program = await asyncio.get_running_loop().subprocess_exec(
                lambda: _ProgramProtocol(self.max_output_bytes),
                *self._command(timeout_s, isolation),
                cwd=workdir,
                env=_environment(workdir),
                start_new_session=True,
                **(self._user.popen_options() if self._user else {}),
            )
            stdin = transport.get_pipe_transport(0)
            stdin.write(args.stdin.encode())  # buffered by the transport; dropped if unread
            stdin.write_eof()
            timed_out = False
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(program.exited)  # the timeout must not cancel it
            except TimeoutError:
                timed_out = True
            finally:
                _kill_group(transport.get_pid())  # the timed-out program, or what one left
                await program.exited
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PIPE_DRAIN_S):
                        await asyncio.shield(program.pipes_closed)
                transport.close()
            return {
                "returncode": transport.get_returncode(),
                "stdout": program.stdout.text(),
                "stderr": program.stderr.text(),
                "timed_out": timed_out,
            }
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _write_files(self, workdir: Path, args: RunPythonArgs) -> None:
        for name, content in {**args.files, PROGRAM_NAME: args.source}.items():
            path = workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        if self._user is not None:
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, self._user.uid, self._user.gid)

    def _command(self, timeout_s: float, isolation: Isolation) -> list[str]:
        limits = {
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_CPU": math.ceil(timeout_s) + CPU_SLACK_S,
            "RLIMIT_FSIZE": FILE_SIZE_LIMIT_BYTES,
            "RLIMIT_NOFILE": OPEN_FILES_LIMIT,
            "RLIMIT_CORE": 0,
        }
        if self._user is not None:
            limits["RLIMIT_NPROC"] = PROCESS_LIMIT
        config = {
            "limits": limits,
            "refuse": list(REFUSED_EVENTS) if isolation == "audit-hook" else [],
            "refusal": REFUSAL,
        }
        python = [self.python, "-I", "-c", _BOOTSTRAP, json.dumps(config), PROGRAM_NAME]
        if isolation == "netns":
            assert self._unshare is not None
            return [self._unshare, "--net", "--map-root-user", *python]
        return python


def _environment(workdir: Path) -> dict[str, str]:
    """A minimal environment: nothing of the server's (keys, tokens) leaks into the program.
    One BLAS/OpenMP thread, since each thread's buffers count against RLIMIT_AS."""
    return {
        "PATH": SANDBOX_PATH,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(pgid, signal.SIGKILL)


def _render(value: dict[str, Any]) -> str:
    """The text an LLM reads: the return code, then each non-empty stream."""
    parts = [f"returncode: {value['returncode']}"]
    parts += [f"{stream}:\n{value[stream]}" for stream in ("stdout", "stderr") if value[stream]]
    return "\n".join(parts)
