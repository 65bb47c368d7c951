"""Learning while serving: each class's PDGraph is refitted from its newest observations in the
background, and the live runs of a refitted class are restated in the new graph and re-ranked.

Every `refit_interval_s` the loop looks at each class; a class whose observation window holds
something newer than its last refit is refitted (`pdgraph.refit`; an open class first grows the
stages its runs have named, `open_apps.grow_open_graph`), the graph is saved as a snapshot, and
the class is ranked by it from then on (`RunControl.use_graph`: the `DemandEstimator` and the
engine's view of the live runs). An invalid refit keeps the current graph. The store reads and
writes, the refit itself and the preparing of the new graph (`DemandEstimator.prepare`: the
Monte-Carlo draws of the states the class's runs commonly pass through, so that ranking them
stays a look-up after the refit) run in a worker thread, off the actor's event loop.

`Refitter` is a collaborator of the scheduler actor; refits are learning, not scheduling, so
they are not counted in the scheduler's overhead. No Ray here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from hermesflow.pdgraph.demand import COMMON_STATE_RUNS, DemandEstimator, PreparedGraph
from hermesflow.pdgraph.model import PDGraph, StageKind
from hermesflow.pdgraph.refit import StageObservation, refit
from hermesflow.schedulers.open_apps import grow_open_graph
from hermesflow.schedulers.runtime_config import RuntimeConfig
from hermesflow.schedulers.runtime_control import RunControl
from hermesflow.store import Store

log = logging.getLogger(__name__)


class Refitter:
    """The scheduler's background refit (module docstring).

    `program_classes` are refitted as they are; every other class is open and first grows the
    stages its runs named, each stage's kind from `backend_kind`. Its own state is, per class,
    the newest observation of its last refit, so an unchanged window is not refitted again."""

    def __init__(
        self,
        config: RuntimeConfig,
        store: Store,
        demand: DemandEstimator,
        program_classes: Collection[str],
        backend_kind: Callable[[str], StageKind],
        runs: RunControl,
    ) -> None:
        self.interval_s = config.refit_interval_s
        self.window = config.refit_window
        self.min_samples = config.refit_min_samples
        self.store = store
        self.demand = demand
        self.program_classes = program_classes
        self.backend_kind = backend_kind
        self.runs = runs
        self._refitted_at: dict[str, tuple[int, int, float]] = {}

    async def run(self) -> None:
        """Refit every class each `refit_interval_s`, forever (a background task)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refit_all()

    async def refit_all(self) -> None:
        for app_class in self.demand.classes:
            try:
                await self.refit(app_class)
            except ValueError as error:  # an invalid refit keeps the current graph
                log.warning("refit of %s skipped: %s", app_class, error)

    async def refit(self, app_class: str) -> bool:
        """Refit a class whose window holds observations newer than its last refit; whether it
        was refitted."""
        observations = await asyncio.to_thread(self.store.observations, app_class, self.window)
        if len(observations) < self.min_samples:
            return False
        newest = (observations[-1].run_id, observations[-1].step, observations[-1].finished_s)
        if self._refitted_at.get(app_class) == newest:
            return False
        self._refitted_at[app_class] = newest
        graph = self.demand.compiled(app_class).graph
        prepared = await asyncio.to_thread(self._learn, graph, observations)
        await asyncio.to_thread(self.store.save_pdgraph, prepared.graph, "refit")
        self.runs.use_graph(prepared)
        return True

    def _learn(self, graph: PDGraph, observations: list[StageObservation]) -> PreparedGraph:
        """The refitted graph, prepared (run in a worker thread: it reads no shared state but
        the estimator's settings)."""
        if graph.name not in self.program_classes:
            graph = grow_open_graph(graph, observations, self.backend_kind)
        graph = refit(graph, observations, window=self.window, min_samples=self.min_samples)
        return self.demand.prepare(graph, COMMON_STATE_RUNS)
