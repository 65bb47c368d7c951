"""A Ray job that runs Semantic-Variable programs on a Hermesflow scheduler of its own.

Submit it with `ray job submit` (see README.md). It starts a scheduler actor with two programs
registered by `module:attribute` — the map-reduce summariser of `dags/map_reduce_program.py`
and the looping `tighten_text` of `programs.py` beside this file — on the backends they use,
submits a few runs through the actor, prints each run as one JSON line, stops the scheduler,
and exits 1 if any run failed or did not finish in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

import ray
from programs import program as tighten

from dags.map_reduce_program import program as map_reduce
from hermesflow.apps.semantic import SemanticProgram
from hermesflow.apps.suite import suite_backends
from hermesflow.client_records import AppViewPhase
from hermesflow.schedulers.runtime import start_scheduler
from hermesflow.schedulers.runtime_config import RuntimeConfig

PROGRAMS: dict[str, SemanticProgram] = {
    "dags.map_reduce_program:program": map_reduce,
    "programs:program": tighten,
}
"""`module:attribute` → program; the scheduler imports each path in its own worker."""

RUNS: list[tuple[SemanticProgram, dict]] = [
    (
        map_reduce,
        {
            "text": "Sea otters hold hands while they sleep so that they do not drift apart.\n\n"
            "They use stones as tools to open the clams and sea urchins they find on the sea floor.",
        },
    ),
    (tighten, {"topic": "sea otters"}),
    (
        map_reduce,
        {"text": "Tea is brewed from the leaves of Camellia sinensis. It is drunk worldwide."},
    ),
]
"""(program, inputs): small runs, a few LLM calls each."""

VIEW_FIELDS = {"app_id", "app_class", "phase", "act_s", "result", "error"}


def runtime_config(db_url: str | None) -> RuntimeConfig:
    """The programs, and of the default server's backends those their nodes run on."""
    used = {
        node.backend
        for program in PROGRAMS.values()
        for node in program.graph.nodes.values()
        if node.served
    }
    return RuntimeConfig(
        db_url=db_url,
        backends=[spec for spec in suite_backends() if spec.name in used],
        programs={program.app_class: path for path, program in PROGRAMS.items()},
        warm_at_start=("llm",),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db-url", default=None, help="SQLAlchemy URL of the store (default: HERMES_DB_URL)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all runs")
    args = parser.parse_args()

    ray.init()  # inside `ray job submit`, RAY_ADDRESS points at the cluster
    scheduler = start_scheduler(
        runtime_config(args.db_url), name=f"semantic-job-{uuid.uuid4().hex[:8]}"
    )
    try:
        runs = [program.submit(scheduler, **inputs) for program, inputs in RUNS]
        print(
            f"submitted {len(runs)} applications: {', '.join(r.app_id for r in runs)}", flush=True
        )
        deadline = time.monotonic() + args.timeout
        finished: list[str] = []
        for run in runs:
            try:
                view = run.wait(max(deadline - time.monotonic(), 0.1))
            except TimeoutError as error:
                print(json.dumps({"app_id": run.app_id, "error": str(error)}), flush=True)
                continue
            if view.phase is AppViewPhase.FINISHED:
                finished.append(run.app_id)
            print(view.model_dump_json(include=VIEW_FIELDS), flush=True)
        if runs[0].app_id in finished:
            print(
                f"first summary, read with .get(): {runs[0].outputs['summary'].get()!r}", flush=True
            )
    finally:
        ray.get(scheduler.shutdown.remote())
        ray.kill(scheduler, no_restart=True)
    print(f"{len(finished)}/{len(runs)} applications finished", flush=True)
    return 0 if len(finished) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
