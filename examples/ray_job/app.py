"""A Ray job that runs applications on a running Hermesflow scheduler, calling its actor directly.

In-cluster code does not need the HTTP API: it finds the scheduler by its actor name and awaits
its methods. Submit this file with `ray job submit` (see README.md) to a cluster where
`hermesflow serve --address auto --detach` (or a driver calling `start_scheduler`) has started
the scheduler. It submits a few small runs of the reference suite, waits for them, prints each
result as one JSON line, and exits 1 if any run failed or did not finish in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

import ray

from hermesflow.client_records import AppViewPhase
from hermesflow.schedulers.runtime import get_scheduler

RUNS: list[tuple[str, dict]] = [
    (
        "map_reduce",
        {
            "title": "Sea otters",
            "text": "Sea otters hold hands while they sleep so that they do not drift apart. "
            "They use stones as tools to open shellfish.",
            "max_chunks": 1,
        },
    ),
    ("react", {"question": "What is 17 times 23?", "max_rounds": 1, "answer": "391"}),
    (
        "map_reduce",
        {
            "title": "Tea",
            "text": "Tea is brewed from the leaves of Camellia sinensis. It is drunk worldwide.",
            "max_chunks": 1,
        },
    ),
]
"""(class, inputs): small runs of the reference suite, two LLM calls at most each."""
VIEW_FIELDS = {"app_id", "app_class", "phase", "act_s", "result", "error"}
"""What is printed of each run's `AppView` (the scheduler answers with the model)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default="scheduler", help="the scheduler actor's name")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all runs")
    args = parser.parse_args()

    ray.init()  # inside `ray job submit`, RAY_ADDRESS points at the cluster
    scheduler = get_scheduler(args.scheduler)
    batch = uuid.uuid4().hex[:8]
    keys = [
        ray.get(scheduler.submit.remote(app_class, inputs, key=f"job-{batch}-{i}")).app_id
        for i, (app_class, inputs) in enumerate(RUNS)
    ]
    print(f"submitted {len(keys)} applications: {', '.join(keys)}", flush=True)

    deadline = time.monotonic() + args.timeout
    views = [
        ray.get(scheduler.wait.remote(key, max(deadline - time.monotonic(), 0.1))) for key in keys
    ]
    for view in views:
        print(json.dumps(view.model_dump(mode="json", include=VIEW_FIELDS)), flush=True)
    finished = sum(view.phase is AppViewPhase.FINISHED for view in views)
    print(f"{finished}/{len(views)} applications finished", flush=True)
    return 0 if finished == len(views) else 1


if __name__ == "__main__":
    sys.exit(main())
