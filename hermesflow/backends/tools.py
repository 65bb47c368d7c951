"""Tool backends: the contract they share (`ToolBackend`) and `PythonToolPool`, which runs
Python functions in worker processes.

`ToolBackend.run` does what every tool backend must: refuse an `LLMCall`, refuse an unknown
tool or arguments that do not fit its `ToolSignature` with a ValueError (a program bug), time
the call, and turn a tool that failed or timed out into an error `CallResult` (an observation
a ReAct agent reads). A subclass implements one primitive, `_invoke`, and `signatures`.

`PythonToolPool` keeps `workers` processes, each of which imported every tool at `load`. A call
takes an idle worker, sends `(tool, args)` down its pipe and waits at most the call's
`timeout_s` for the reply; a worker that overruns (or dies) is killed and replaced in the
background while the error result goes back at once. Processes, not threads, because only a
process can be stopped mid-computation. Each is a fresh interpreter (spawn semantics, see
`_Worker.start`), never a fork: the pool lives in Ray actors and event loops, which run
threads, and forking a threaded process can deadlock the child.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from hermesflow.backends.base import Backend, DeltaSink
from hermesflow.backends.builtin_tools import BUILTIN_TOOLS
from hermesflow.backends.calls import Call, CallErrorCode, CallResult, ToolCall

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 60.0
"""How long a new worker may take to start Python and import its tools."""

WORKER_STOP_GRACE_S = 5.0
"""How long `unload` waits for a worker to leave on its own before it is killed."""

STOP_POLL_S = 0.01
"""How often `unload` looks whether a stopping worker has left."""

PARENT_CHECK_S = 1.0
"""How often a worker looks whether its parent is still alive."""

_WORKER_ENTRY = (
    "import sys; from hermesflow.backends.tools import serve_tools; serve_tools(int(sys.argv[1]))"
)
"""What a worker interpreter runs (`python -c`); the socket's fd number is its argument."""

# ---------------------------------------------------------------------------------------------
# Signatures: what a tool takes, checked in the parent before a call is dispatched.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolParam:
    """One keyword parameter of a tool: its type as written ("" if none) and, when it is
    optional, the repr of its default."""

    name: str
    annotation: str = ""
    default: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None

    def __str__(self) -> str:
        text = f"{self.name}: {self.annotation}" if self.annotation else self.name
        return text if self.required else f"{text} = {self.default}"


@dataclass(frozen=True, slots=True)
class ToolSignature:
    """The name, parameters and one-line summary of a tool: what a prompt lists and what
    `check` holds arguments to. Plain data, so a worker process can send it to the parent."""

    name: str
    params: tuple[ToolParam, ...]
    summary: str = ""
    takes_any_keyword: bool = False
    """The function has `**kwargs`: argument names beyond `params` are its business."""
    arguments: type[BaseModel] | None = None
    """The model a tool made with `of_model` validates its arguments with, so that a caller (the
    scheduler, before it queues a call) can check their types and values too, with `parse`."""

    @classmethod
    def of_function(cls, name: str, function: Callable[..., Any]) -> ToolSignature:
        """Read the signature of a tool function; it must take keyword arguments."""
        params: list[ToolParam] = []
        takes_any_keyword = False
        for param in inspect.signature(function).parameters.values():
            if param.kind is param.POSITIONAL_ONLY:
                raise ValueError(
                    f"tool {name!r}: parameter {param.name!r} is positional-only, but tools are "
                    "called with keyword arguments; remove the '/' from its definition"
                )
            if param.kind is param.VAR_KEYWORD:
                takes_any_keyword = True
            elif param.kind is not param.VAR_POSITIONAL:
                annotation = "" if param.annotation is param.empty else param.annotation
                if not isinstance(annotation, str):
                    annotation = inspect.formatannotation(annotation)
                default = None if param.default is param.empty else repr(param.default)
                params.append(ToolParam(param.name, annotation, default))
        summary = (inspect.getdoc(function) or "").partition("\n")[0]
        return cls(name, tuple(params), summary, takes_any_keyword)

    @classmethod
    def of_model(cls, name: str, model: type[BaseModel], summary: str) -> ToolSignature:
        """The signature of a tool whose arguments are the fields of a pydantic model."""
        params = tuple(
            ToolParam(
                field,
                inspect.formatannotation(info.annotation),
                None if info.is_required() else repr(info.get_default(call_default_factory=True)),
            )
            for field, info in model.model_fields.items()
        )
        return cls(name, params, summary, arguments=model)

    def __str__(self) -> str:
        params = [str(p) for p in self.params] + (["**kwargs"] if self.takes_any_keyword else [])
        return f"{self.name}({', '.join(params)})"

    def check(self, args: Mapping[str, Any]) -> None:
        """Raise ValueError naming the parameters if an argument is missing or unknown."""
        names = {p.name for p in self.params}
        missing = [p.name for p in self.params if p.required and p.name not in args]
        unknown = [] if self.takes_any_keyword else [a for a in args if a not in names]
        if missing or unknown:
            problems = [f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(
                unknown
            )
            raise ValueError(
                f"tool {self.name!r}: {'; '.join(problems)} argument(s); it takes {self}"
            )

    def parse(self, model: type[BaseModel], args: Mapping[str, Any]) -> Any:
        """Check `args`, then validate their types with `model` (ValueError on a mismatch)."""
        self.check(args)
        try:
            return model.model_validate(args)
        except ValidationError as error:
            details = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
            raise ValueError(
                f"tool {self.name!r}: bad arguments ({details}); it takes {self}"
            ) from None


def to_json(value: Any) -> str:
    """Serialise a tool's result; ValueError if it is not plain JSON (nan and inf included)."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"the tool returned a value of type {type(value).__name__} that is not "
            f"JSON-serialisable ({error}); return dicts, lists, strings, numbers, booleans or None"
        ) from None


# ---------------------------------------------------------------------------------------------
# The contract of tool backends.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What `_invoke` returns: the JSON `value`, its `text` rendering, or an `error` message
    when the tool failed or timed out (`value` may still carry partial output then), with
    `error_code` TOOL_ERROR when the tool itself raised (a retry would fail the same way)."""

    value: Any = None
    text: str = ""
    error: str | None = None
    error_code: CallErrorCode | None = None


class ToolBackend(Backend):
    """A backend whose calls are `ToolCall`s of named tools (module docstring)."""

    @property
    @abstractmethod
    def signatures(self) -> Mapping[str, ToolSignature]:
        """The tools this backend serves, by name (for a pool: known once loaded)."""

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """Whether `load` has run (and `unload` not since): `run` needs it."""

    @abstractmethod
    async def _invoke(self, call: ToolCall, signature: ToolSignature) -> ToolOutput:
        """Run one call of a known tool whose argument names `signature.check` accepted.

        Raise ValueError for arguments of the wrong type or value (a program bug); return a
        `ToolOutput` with `error` when the tool itself failed or ran past `call.timeout_s`.
        """

    async def run(self, call: Call, on_delta: DeltaSink | None = None) -> CallResult:
        """Serve one tool call; `on_delta` is unused (tool results are not streamed)."""
        if not isinstance(call, ToolCall):
            raise TypeError(
                f"backend {self.name!r} ({self.type_name}) serves tool calls, not {call.kind!r} "
                "calls; send LLM calls to an LLM backend"
            )
        if not self.loaded:
            raise RuntimeError(f"backend {self.name!r} is not loaded; call load() first")
        signature = self.signatures.get(call.tool)
        if signature is None:
            known = ", ".join(str(s) for s in self.signatures.values())
            raise ValueError(
                f"backend {self.name!r}: unknown tool {call.tool!r}; its tools: {known}"
            )
        signature.check(call.args)
        started = time.perf_counter()
        output = await self._invoke(call, signature)
        seconds = time.perf_counter() - started
        if output.error is None:
            try:
                to_json(output.value)
            except ValueError as not_json:
                output = ToolOutput(error=str(not_json), error_code=CallErrorCode.TOOL_ERROR)
        if output.error is not None:
            log.debug(
                "backend %r: tool %r failed after %.3f s: %s",
                self.name,
                call.tool,
                seconds,
                output.error,
            )
            return CallResult(
                value=output.value,
                seconds=seconds,
                finish_reason="error",
                error=output.error,
                error_code=output.error_code,
            )
        return CallResult(text=output.text, value=output.value, seconds=seconds)


# ---------------------------------------------------------------------------------------------
# PythonToolPool: tool functions in worker processes.
# ---------------------------------------------------------------------------------------------


def _split_path(path: str) -> tuple[str, str] | None:
    """("module", "function") of a "module:function" path, None if it is not one."""
    module_name, colon, attribute = str(path).partition(":")
    if not (module_name and colon and attribute.isidentifier()):
        return None
    return module_name, attribute


def _import_tool(name: str, path: str) -> Callable[..., Any]:
    """Import the function a "module:function" path names (ImportError naming the tool)."""
    module_name, attribute = _split_path(path) or (path, "")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a module that fails to import, for whatever reason
        raise ImportError(
            f"tool {name!r}: cannot import {module_name!r} ({type(error).__name__}: {error})"
        ) from error
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ImportError(f"tool {name!r}: module {module_name!r} has no function {attribute!r}")
    return function


def serve_tools(fd: int) -> None:
    """The worker process, started by `_Worker.start` on the socket `fd` it inherited.

    Reads the tool paths, imports the tools and replies `("ready", signatures)` (or
    `("failed", message)`), then answers `(tool, args)` requests with `("ok", json_text)` or
    `("error", message)` until it reads `None` or the parent goes away.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us
    connection = Connection(fd)
    _exit_with_parent()
    tool_paths: dict[str, str] = connection.recv()
    try:
        functions = {name: _import_tool(name, path) for name, path in tool_paths.items()}
        signatures = {name: ToolSignature.of_function(name, f) for name, f in functions.items()}
    except (ImportError, ValueError) as error:  # reported to `load`, which raises it
        connection.send(("failed", str(error)))
        return
    connection.send(("ready", signatures))
    while (request := _receive(connection)) is not None:
        tool, args = request
        try:
            reply = ("ok", to_json(functions[tool](**args)))
        except Exception as error:  # the tool's failure is the caller's observation
            reply = ("error", f"{type(error).__name__}: {error}")
        connection.send(reply)


def _exit_with_parent() -> None:
    """Leave when the parent dies (e.g. its Ray actor is killed), even mid-tool: a thread
    watches the parent pid, since a busy worker never reads the closed pipe."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _receive(connection: Connection) -> Any:
    """The next request, or None when the parent said stop or went away."""
    try:
        return connection.recv()
    except EOFError:
        return None


async def _readable(connection: Connection, timeout_s: float) -> bool:
    """Wait until `connection` has data (or its other end closed); False on timeout."""
    if connection.poll():
        return True
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(connection.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        async with asyncio.timeout(timeout_s):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(connection.fileno())


class _Worker:
    """The parent's handle on one worker process (one call at a time)."""

    def __init__(self, tool_paths: dict[str, str], label: str) -> None:
        self._tool_paths = tool_paths
        self._label = label
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> dict[str, ToolSignature]:
        """Start the process and wait until it imported the tools; ImportError if it failed.

        A fresh interpreter (spawn semantics) started with `subprocess`, not `multiprocessing`:
        multiprocessing's spawn re-imports the caller's `__main__` in every child, which
        breaks any script that lacks an `if __name__ == "__main__"` guard. The parent's
        `sys.path` goes along in PYTHONPATH, so the tools import as they would here.
        """
        self.kill()
        parent_end, child_end = multiprocessing.Pipe()
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        command = [sys.executable, "-c", _WORKER_ENTRY, str(child_end.fileno())]
        try:
            self._process = subprocess.Popen(
                command, env=environment, pass_fds=[child_end.fileno()]
            )
        finally:
            child_end.close()
        self._connection = parent_end
        parent_end.send(self._tool_paths)
        if not await _readable(parent_end, WORKER_START_TIMEOUT_S):
            self.kill()
            raise ImportError(
                f"{self._label}: the worker did not start in {WORKER_START_TIMEOUT_S} s"
            )
        try:
            status, detail = parent_end.recv()
        except EOFError:
            status, detail = "failed", f"the worker exited with code {self._process.wait()}"
        if status != "ready":
            self.kill()
            raise ImportError(f"{self._label}: {detail}")
        return detail

    async def call(self, tool: str, args: dict[str, Any], timeout_s: float) -> tuple[str, Any]:
        """`("ok", value)`, `("error", message)`, or `("lost", message)` when the worker timed
        out or died — then it has been killed and must be started again before the next call."""
        assert self._connection is not None and self._process is not None, "start the worker first"
        self._connection.send((tool, args))
        if not await _readable(self._connection, timeout_s):
            self.kill()
            return "lost", f"tool {tool!r} timed out after {timeout_s:g} s; its worker was killed"
        try:
            status, detail = self._connection.recv()
        except EOFError:
            code = self._process.wait()
            self.kill()
            return "lost", f"the worker running {tool!r} died (exit code {code})"
        return status, json.loads(detail) if status == "ok" else detail

    def kill(self) -> None:
        """Stop the process at once (SIGKILL) and close the pipe."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None

    async def stop(self) -> None:
        """Ask the process to leave; kill it if it does not within the grace period."""
        if self._connection is not None and self.alive:
            self._connection.send(None)
            deadline = time.monotonic() + WORKER_STOP_GRACE_S
            while self.alive and time.monotonic() < deadline:
                await asyncio.sleep(STOP_POLL_S)
        self.kill()


class PythonToolPool(ToolBackend):
    """Python tool functions served by a pool of worker processes (module docstring).

    Options: `tools` maps each tool name to a "module:function" import path (default:
    `BUILTIN_TOOLS`); `workers` is the number of processes, which is the capacity. The
    functions must take keyword arguments and return JSON values; they are imported in the
    workers only, never in the calling process. Argument names are checked against each
    function's signature before dispatch; their types are the function's business.
    """

    type_name: ClassVar[str] = "python-tools"

    def __init__(self, name: str, tools: Mapping[str, str] | None = None, workers: int = 2) -> None:
        super().__init__(name, capacity=workers)
        self.tool_paths = dict(BUILTIN_TOOLS if tools is None else tools)
        if not self.tool_paths:
            raise ValueError(f"backend {name!r}: 'tools' is empty; give at least one tool")
        malformed = {t: p for t, p in self.tool_paths.items() if _split_path(p) is None}
        if malformed:
            raise ValueError(
                f"backend {name!r}: tool paths must read 'module:function', not {malformed}"
            )
        self._signatures: dict[str, ToolSignature] = {}
        self._workers: list[_Worker] = []
        self._idle: asyncio.Queue[_Worker] | None = None
        self._restarts: set[asyncio.Task[None]] = set()

    @property
    def signatures(self) -> Mapping[str, ToolSignature]:
        return self._signatures

    @property
    def loaded(self) -> bool:
        return self._idle is not None

    async def load(self) -> None:
        """Start the workers; each imports every tool. ImportError if a path is wrong."""
        if self._workers:
            return
        workers = [
            _Worker(self.tool_paths, f"{self.name}-worker-{i}") for i in range(self.capacity)
        ]
        started = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        failure = next((s for s in started if isinstance(s, BaseException)), None)
        if failure is not None:
            for worker in workers:
                worker.kill()
            raise failure
        self._signatures = started[0]
        self._workers = workers
        self._idle = asyncio.Queue()
        for worker in workers:
            self._idle.put_nowait(worker)
        log.info(
            "backend %r: %d workers serve %s",
            self.name,
            len(workers),
            ", ".join(map(str, self._signatures.values())),
        )

    async def unload(self) -> None:
        """Stop the workers (restarts in progress are abandoned)."""
        for task in self._restarts:
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self._workers))
        self._workers, self._idle, self._signatures = [], None, {}

    async def _invoke(self, call: ToolCall, signature: ToolSignature) -> ToolOutput:
        assert self._idle is not None
        worker = await self._idle.get()
        try:
            if not worker.alive:  # a replacement that failed to start earlier: try again
                await worker.start()
            status, detail = await worker.call(call.tool, call.args, call.timeout_s)
        except ImportError as error:
            self._idle.put_nowait(worker)
            return ToolOutput(error=f"no worker could be started for {call.tool!r}: {error}")
        except BaseException:  # cancelled mid-call: the worker may still be busy, so replace it
            worker.kill()
            self._replace(worker)
            raise
        if status == "lost":
            self._replace(worker)
            return ToolOutput(error=detail)
        self._idle.put_nowait(worker)
        if status == "error":
            return ToolOutput(
                error=f"tool {call.tool!r} raised {detail}", error_code=CallErrorCode.TOOL_ERROR
            )
        return ToolOutput(
            value=detail, text=detail if isinstance(detail, str) else json.dumps(detail)
        )

    def _replace(self, worker: _Worker) -> None:
        """Start a killed worker again in the background, then make it idle again."""
        task = asyncio.create_task(self._restart(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, worker: _Worker) -> None:
        try:
            await worker.start()
        except ImportError:
            log.exception(
                "backend %r: a worker could not be restarted; the next call retries", self.name
            )
        finally:
            if self._idle is not None:
                self._idle.put_nowait(worker)
