"""Background processes that outlive the command that started them, found again by PID file.

`make up` and `make down` are two different Python processes, so a component is remembered by a
small JSON record (PID, the process's start time, its command and log) instead of a Popen
object. The start time is what makes a stale PID file harmless: a PID the kernel has reused for
another program does not match the recorded start time, and nothing is signalled. Processes are
never looked up by name (`ps | grep`): a shared machine runs other Airflows and Rays.

Stopping follows what Airflow and Ray need (docs/STACK §3, §5): SIGTERM to the component's
process group (each component leads its own session), a grace period, SIGKILL to the group, then
SIGKILL by PID to any descendant that left the group, and a final check that none is alive.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

STOP_GRACE_S = 20.0
"""How long a component may take to exit after SIGTERM before it is killed (Ray's head drains
up to 30 s, but it is stopped after its work is gone; Airflow's components take 1-5 s)."""
EXIT_POLL_S = 0.05
"""How often a stopping process that is no child of ours is checked."""
START_TIME_SLACK_S = 1.0
"""psutil's create_time is rounded by the kernel's clock ticks; a larger gap is another process."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `host:port`."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class ProcessRecord:
    """What a PID file holds: enough to find the process again and to prove it is the same one."""

    name: str
    pid: int
    create_time: float
    command: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        """The recorded process if it still runs (not a zombie, not a reused PID)."""
        try:
            found = psutil.Process(self.pid)
            same = abs(found.create_time() - self.create_time) < START_TIME_SLACK_S
            return found if same and alive(found) else None
        except psutil.NoSuchProcess:
            return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        """The record in `path`, or None if there is none (or it is unreadable: a half-written
        file from a crash is treated as no process, and `up` starts the component again)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def spawn(
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start `command` in its own session with stdout and stderr appended to `log`, so signals
    reach it and its children and nothing else, and it survives the caller's exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    created = psutil.Process(process.pid).create_time()
    return process, ProcessRecord(name, process.pid, created, list(command), str(log))


def stop_group(
    leader: psutil.Process,
    grace_s: float = STOP_GRACE_S,
    wait: Callable[[float], int | None] | None = None,
    *,
    term_leader_only: bool = False,
) -> str:
    """Stop the process group `leader` leads and every descendant of it; return how the leader
    ended (`exit <code>`, `killed`, or `exited` when it was no child of ours and its code is
    unknown). `wait` is the parent's `Popen.wait` when the caller started it (to reap it and
    read its exit code). `term_leader_only` sends SIGTERM to the leader alone, for a leader
    that shuts its children down in order itself (`ray start --block`); SIGKILL after the
    grace period still goes to the whole group. Raises RuntimeError naming the PIDs if
    anything survives SIGKILL."""
    tree = process_tree(leader)
    if term_leader_only:
        _ignore_gone(leader.terminate)
    else:
        signal_group(leader.pid, signal.SIGTERM)
    outcome = _await_exit(leader, grace_s, wait)
    if outcome is None:
        signal_group(leader.pid, signal.SIGKILL)
        _await_exit(leader, grace_s, wait)
        outcome = "killed"
    # Descendants that left the group (or outlived its leader), by PID.
    survivors = [p for p in tree if alive(p)]
    for process in survivors:
        _ignore_gone(process.kill)
    _, still_alive = psutil.wait_procs(survivors, timeout=grace_s)
    leftover = [p.pid for p in still_alive if alive(p)]
    if leftover:
        raise RuntimeError(f"processes survived SIGKILL: {leftover}; check them with `ps -p`")
    return outcome


def _await_exit(
    leader: psutil.Process, timeout_s: float, wait: Callable[[float], int | None] | None
) -> str | None:
    """`exit <code>` (or `exited`) once the leader has exited, None after `timeout_s`.

    A leader that is no child of ours is reaped by whatever adopted it, sometimes seconds
    later (PID 1 of a container polls), so its zombie already counts as exited."""
    if wait is not None:
        try:
            return f"exit {wait(timeout_s)}"
        except subprocess.TimeoutExpired:
            return None
    deadline = time.monotonic() + timeout_s
    while alive(leader):
        if time.monotonic() > deadline:
            return None
        time.sleep(EXIT_POLL_S)
    return "exited"


def wait_until(
    probe: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    failed: Callable[[], str | None] = lambda: None,
    poll_s: float = 0.5,
) -> None:
    """Poll `probe` until true; raise TimeoutError naming `what` after `timeout_s`, or
    RuntimeError at once when `failed` returns a reason (a component that exited)."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        reason = failed()
        if reason:
            raise RuntimeError(f"while waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def process_tree(root: psutil.Process | int) -> list[psutil.Process]:
    """The process and all its descendants, snapshotted now."""
    try:
        process = root if isinstance(root, psutil.Process) else psutil.Process(root)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a reparented zombie waits on PID 1, it runs nothing)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive_pids(processes: Iterable[psutil.Process]) -> list[int]:
    return [p.pid for p in processes if alive(p)]


def signal_group(pid: int, signum: signal.Signals) -> None:
    """Signal the process group led by `pid`; a group that is already gone is fine."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _ignore_gone(action: Callable[[], object]) -> None:
    try:
        action()
    except psutil.NoSuchProcess:
        pass
