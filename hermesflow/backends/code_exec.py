"""`CodeExecutor`: runs model-written Python in a throwaway subprocess without network.

One tool, `run_python(source, stdin="", files={})`, returns `{"returncode", "stdout",
"stderr", "timed_out"}`. Each call:

1. makes a fresh temporary directory, writes `files` and the program (`main.py`) into it;
2. starts `python -I` (isolated mode: no PYTHON* variables, no user site; the interpreter
   chosen at `load`, see "Privileges") in that directory, in a new session (its own process
   group), with a minimal environment, as `run_as` when Hermesflow runs as root;
3. the interpreter first runs a small bootstrap that sets resource limits (address space,
   CPU seconds, file size, open files, and processes when it runs as a dedicated user), in
   audit-hook mode installs the audit hook, then runs `main.py` as `__main__`;
4. on `timeout_s` the whole process group is killed; after the program ends, whatever it
   left in its group is killed too; the directory is removed.

Privileges. Started as root, the program runs as `run_as` (default "nobody"), switched to by
a command prefix: `setpriv --reuid --regid --clear-groups --inh-caps=-all --no-new-privs`
(util-linux), which execs `env`, which execs the interpreter. A prefix, because the process
is started by the event loop: Ray's async actors run on uvloop, whose `subprocess_exec` takes
no `user`/`group` arguments, and a `preexec_fn` is unsafe in a process with threads (Ray
actors have them); a prefix works the same under every loop. Not a drop in the bootstrap,
because the interpreter would then start, and import the bootstrap's modules, as root: what
runs as the user would differ from what was tried. `env` sits between them because setpriv
keeps root's capabilities until its own exec, so it would open an interpreter the user cannot
read; `env` runs with the user's rights only. At `load` the interpreter is chosen by trying
it as that user: the `python` option (default this interpreter), then `python3` on the
sandbox PATH (which has only that interpreter's packages); the choice and its reason are
logged. A virtualenv under a private home (`/root`) is the usual reason the first one fails.

Network isolation, chosen at `load` (`isolation` attribute, logged):

* "netns" — the program runs in a new network namespace with only a loopback device that is
  down, so no address is reachable, the host's 127.0.0.1 included. Run as root, `unshare --net`
  makes it, then the prefix above drops to `run_as` (the namespace first: in a user namespace
  root could make, `run_as` would be unmapped). Otherwise `unshare --net --map-root-user` makes
  a user namespace too, which needs unprivileged user namespaces.
* "audit-hook" — the fallback where `unshare` is missing or refused (e.g. a container's
  seccomp profile): a `sys.addaudithook` hook refuses socket connect/bind/send and name look-up,
  and starting processes (a child would not carry the hook).

What it does NOT protect against: the audit hook is no security boundary (PEP 578 says so):
native code — `ctypes`, a C extension — bypasses it. The file system is not isolated: the
program can read what its user can read, and write outside its directory what its user can
write. Started as root, the program runs as `run_as`, without supplementary groups,
capabilities or set-user-ID gains, only if setpriv is installed and that user can run one of
the interpreters tried; otherwise as root (logged as a warning that names the fix). A process
that leaves its process group (setsid) in netns mode is not killed with it. Memory is bounded
per process (RLIMIT_AS), not in total, and the process limit (RLIMIT_NPROC) only applies when
running as a dedicated user, since it counts all processes of the user. CPU and wall time are
bounded; disk use only per file (RLIMIT_FSIZE). Use a container or a VM for hostile code.
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
from dataclasses import dataclass, replace
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
"""Limit of each trial run at `load` (an interpreter as the user, a network namespace)."""

PROBE_SOURCE = "import os; print(os.geteuid())"
"""The trial program: it must run, and as the user the programs are to run as."""

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
"""The programs' PATH, where `FALLBACK_PYTHON` is looked for too."""

FALLBACK_PYTHON = "python3"
"""Tried after the `python` option when `run_as` cannot run that (module docstring)."""

DROP_PRIVILEGES = ("--clear-groups", "--inh-caps=-all", "--no-new-privs")
"""setpriv's options besides the ids: no supplementary groups, no capabilities to pass on, and
no set-user-ID or file-capability gains for anything the program starts."""

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
    """The unprivileged user the program runs as when Hermesflow runs as root, and the
    commands that switch to it (module docstring, "Privileges")."""

    name: str
    uid: int
    gid: int
    setpriv: str
    env: str

    def prefix(self) -> list[str]:
        """What runs the rest of a command line as this user."""
        ids = [f"--reuid={self.uid}", f"--regid={self.gid}"]
        return [self.setpriv, *ids, *DROP_PRIVILEGES, "--", self.env, "--"]


@dataclass(frozen=True, slots=True)
class _Launch:
    """How programs start: the interpreter, the user (None: Hermesflow's own), the isolation
    and, for "netns", the unshare command."""

    python: str
    user: _SandboxUser | None
    isolation: Isolation
    unshare: str | None = None

    def prefix(self) -> list[str]:
        """The commands before the interpreter's (module docstring: the namespace first)."""
        as_user = self.user.prefix() if self.user else []
        if self.isolation == "audit-hook":
            return as_user
        assert self.unshare is not None
        if self.user is None:
            return [self.unshare, "--net", "--map-root-user"]
        return [self.unshare, "--net", *as_user]


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
    interpreter, default this one, with the packages the programs may import; when `run_as`
    cannot run it, `python3` on the sandbox PATH is used instead).
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
        self._launch: _Launch | None = None
        self._slots: asyncio.Semaphore | None = None

    @property
    def signatures(self) -> dict[str, ToolSignature]:
        return {RUN_PYTHON.name: RUN_PYTHON}

    @property
    def loaded(self) -> bool:
        return self._slots is not None

    @property
    def isolation(self) -> Isolation | None:
        """The isolation in force, known after `load`."""
        return self._launch.isolation if self._launch else None

    @property
    def interpreter(self) -> str | None:
        """The interpreter the programs run with, chosen at `load`."""
        return self._launch.python if self._launch else None

    @property
    def user(self) -> str:
        """Who the programs run as."""
        return _user_name(self._launch.user if self._launch else None)

    async def load(self) -> None:
        """Choose the user, the interpreter and the isolation by trying them (module docstring)."""
        self._launch = await self._choose_isolation(await self._choose_interpreter())
        self._slots = asyncio.Semaphore(self.capacity)
        log.info(
            "backend %r: code runs as %s with %s and isolation %s",
            self.name,
            self.user,
            self.interpreter,
            self.isolation,
        )

    async def unload(self) -> None:
        self._slots = None

    def _sandbox_user(self) -> _SandboxUser | None:
        """`run_as` when Hermesflow runs as root and can switch to it; None otherwise."""
        if os.geteuid() != 0 or self.run_as is None:
            return None
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            log.warning(
                "backend %r: no user %r; code runs as root — create that user, or set the "
                "backend's run_as option to an unprivileged user",
                self.name,
                self.run_as,
            )
            return None
        setpriv, env = shutil.which("setpriv"), shutil.which("env")
        if setpriv is None or env is None:
            log.warning(
                "backend %r: the setpriv or env command is missing; code runs as root — "
                "install util-linux and coreutils to run it as %r",
                self.name,
                self.run_as,
            )
            return None
        return _SandboxUser(entry.pw_name, entry.pw_uid, entry.pw_gid, setpriv, env)

    async def _choose_interpreter(self) -> _Launch:
        """The user and the interpreter (module docstring, "Privileges"); as root, with a
        warning that names the fix, when the sandbox user can run no interpreter."""
        user = self._sandbox_user()
        launch, failures = await self._first_interpreter_that_runs(user)
        if launch is None and user is not None:
            log.warning(
                "backend %r: user %r can run no Python interpreter (%s); code runs as root — "
                "install Python where %r can read it (e.g. apt-get install python3), or set the "
                "backend's python option to such an interpreter",
                self.name,
                user.name,
                "; ".join(failures),
                user.name,
            )
            launch, failures = await self._first_interpreter_that_runs(None)
        if launch is None:
            tried = "; ".join(failures)
            raise RuntimeError(
                f"backend {self.name!r}: no Python interpreter starts here ({tried}); set the "
                "backend's python option to one that does"
            )
        if failures:
            who = _user_name(launch.user)
            log.warning(
                "backend %r: %s cannot run %s; code runs with %s, which has only its own "
                "packages — install the interpreter the programs need where %s can read it, "
                "and set the python option to it",
                self.name,
                who,
                "; ".join(failures),
                launch.python,
                who,
            )
        return launch

    async def _first_interpreter_that_runs(
        self, user: _SandboxUser | None
    ) -> tuple[_Launch | None, list[str]]:
        """The first of the `python` option and `FALLBACK_PYTHON` that runs the trial program
        as `user`, and why those before it did not."""
        fallback = shutil.which(FALLBACK_PYTHON, path=SANDBOX_PATH)
        failures: list[str] = []
        for python in dict.fromkeys([self.python, *([fallback] if fallback else [])]):
            launch = _Launch(python, user, "audit-hook")
            failure = await self._probe(launch)
            if failure is None:
                return launch, failures
            failures.append(f"{python}: {failure}")
        return None, failures

    async def _choose_isolation(self, launch: _Launch) -> _Launch:
        if self.requested_isolation == "audit-hook":
            return launch
        unshare = shutil.which("unshare")
        failure = "the unshare command is not installed (util-linux)"
        if unshare is not None:
            netns = replace(launch, isolation="netns", unshare=unshare)
            failure = await self._probe(netns)
            if failure is None:
                return netns
            failure = f"{' '.join(netns.prefix()[:2])} failed: {failure}"
        if self.requested_isolation == "netns":
            raise RuntimeError(f"backend {self.name!r}: network namespaces unavailable: {failure}")
        log.warning(
            "backend %r: %s; falling back to the audit-hook sandbox (weaker)", self.name, failure
        )
        return launch

    async def _probe(self, launch: _Launch) -> str | None:
        """Why the trial program cannot run with `launch`; None when it ran as it should."""
        try:
            ran = await self._execute(RunPythonArgs(source=PROBE_SOURCE), PROBE_TIMEOUT_S, launch)
        except OSError as error:
            return str(error)
        if ran["returncode"] != 0:
            return ran["stderr"].strip() or f"exit code {ran['returncode']}"
        if launch.user is not None and ran["stdout"].strip() != str(launch.user.uid):
            return f"it ran as uid {ran['stdout'].strip()}, not {launch.user.uid}"
        return None

    async def _invoke(self, call: ToolCall, signature: ToolSignature) -> ToolOutput:
        args = signature.parse(RunPythonArgs, call.args)
        assert self._slots is not None and self._launch is not None
        async with self._slots:
            try:
                value = await self._execute(args, call.timeout_s, self._launch)
            except OSError as error:
                return ToolOutput(error=f"run_python could not start the program: {error}")
        if value["timed_out"]:
            return ToolOutput(
                value=value,
                error=f"run_python timed out after {call.timeout_s:g} s; the program was killed",
            )
        return ToolOutput(value=value, text=_render(value))

    async def _execute(
        self, args: RunPythonArgs, timeout_s: float, launch: _Launch
    ) -> dict[str, Any]:
        """Run one program in a fresh directory (module docstring, steps 1-4)."""
        workdir = Path(tempfile.mkdtemp(prefix="hermesflow-code-"))
        try:
            self._write_files(workdir, args, launch.user)
            command = [*launch.prefix(), *self._interpreter_command(timeout_s, launch)]
            try:
                transport, program = await asyncio.get_running_loop().subprocess_exec(
                    lambda: _ProgramProtocol(self.max_output_bytes),
                    *command,
                    cwd=workdir,
                    env=_environment(workdir),
                    start_new_session=True,
                )
            except OSError as error:  # uvloop's error does not name the command
                raise OSError(error.errno, error.strerror, command[0]) from error
            _feed(transport.get_pipe_transport(0), args.stdin.encode())
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

    @staticmethod
    def _write_files(workdir: Path, args: RunPythonArgs, user: _SandboxUser | None) -> None:
        for name, content in {**args.files, PROGRAM_NAME: args.source}.items():
            path = workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        if user is not None:
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, user.uid, user.gid)

    def _interpreter_command(self, timeout_s: float, launch: _Launch) -> list[str]:
        limits = {
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_CPU": math.ceil(timeout_s) + CPU_SLACK_S,
            "RLIMIT_FSIZE": FILE_SIZE_LIMIT_BYTES,
            "RLIMIT_NOFILE": OPEN_FILES_LIMIT,
            "RLIMIT_CORE": 0,
        }
        if launch.user is not None:
            limits["RLIMIT_NPROC"] = PROCESS_LIMIT
        config = {
            "limits": limits,
            "refuse": list(REFUSED_EVENTS) if launch.isolation == "audit-hook" else [],
            "refusal": REFUSAL,
        }
        return [launch.python, "-I", "-c", _BOOTSTRAP, json.dumps(config), PROGRAM_NAME]


def _user_name(user: _SandboxUser | None) -> str:
    """The name of `user`, or of Hermesflow's own user when there is none to switch to."""
    return user.name if user else pwd.getpwuid(os.geteuid()).pw_name


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


def _feed(stdin: asyncio.WriteTransport | None, data: bytes) -> None:
    """Give the program its stdin, buffered by the transport, and close it. A program that exits
    before reading it (or a launcher that fails at once) drops it: its pipe may already be
    closed, which uvloop reports by raising where asyncio's own loop ignores the write."""
    if stdin is None or stdin.is_closing():
        return
    with contextlib.suppress(RuntimeError, ConnectionError):
        stdin.write(data)
        stdin.write_eof()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(pgid, signal.SIGKILL)


def _render(value: dict[str, Any]) -> str:
    """The text an LLM reads: the return code, then each non-empty stream."""
    parts = [f"returncode: {value['returncode']}"]
    parts += [f"{stream}:\n{value[stream]}" for stream in ("stdout", "stderr") if value[stream]]
    return "\n".join(parts)
