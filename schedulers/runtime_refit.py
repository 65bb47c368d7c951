"""Learning while serving: each class's PDGraph is refitted from its newest observations in the
background, and the live runs of a refitted class are restated in the new graph and re-ranked.

Every `refit_interval_s` the loop looks at each class; a class whose observation window holds
something newer than its last refit is refitted (`pdgraph.refit`; an open class first grows the
stages its runs have named, `open_apps.grow_open_graph`), the graph is saved as a snapshot, and
the `DemandEstimator` ranks by it from then on. An invalid refit keeps the current graph. The
store reads and writes run in a thread, off the actor's event loop.

A mixin of `HermesScheduler`; it uses `config`, `demand`, `programs`, `store`, `live`, `engine`,
`_graph_position` and `_backend_kind`; its own state is `_refitted_at` (per class, the newest
observation of its last refit).
"""

from __future__ import annotations

import asyncio
import logging

from hermesflow.pdgraph.model import PDGraph
from hermesflow.pdgraph.refit import refit
from hermesflow.schedulers.open_apps import grow_open_graph
from hermesflow.schedulers.runtime_state import LiveRun

log = logging.getLogger(__name__)


class RefitMixin:
    """The scheduler's background refit (module docstring)."""

    async def _refit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refit_interval_s)
            for app_class in self.demand.classes:
                try:
                    await self._refit(app_class)
                except ValueError as error:  # an invalid refit keeps the current graph
                    log.warning("refit of %s skipped: %s", app_class, error)

    async def _refit(self, app_class: str) -> None:
        """Refit a class whose window holds observations newer than its last refit."""
        observations = await asyncio.to_thread(self.store.observations, app_class, self.config.refit_window)
        if len(observations) < self.config.refit_min_samples:
            return
        newest = (observations[-1].run_id, observations[-1].step, observations[-1].finished_s)
        if self._refitted_at.get(app_class) == newest:
            return
        self._refitted_at[app_class] = newest
        graph = self.demand.compiled(app_class).graph
        if app_class not in self.programs:
            graph = grow_open_graph(graph, observations, self._backend_kind)
        graph = refit(
            graph,
            observations,
            window=self.config.refit_window,
            min_samples=self.config.refit_min_samples,
        )
        await asyncio.to_thread(self.store.save_pdgraph, graph, "refit")
        self._use_graph(graph)

    def _use_graph(self, graph: PDGraph) -> None:
        """Rank the class by `graph` from now on, its live runs included."""
        self.demand.replace_graph(graph)
        for live in self.live.values():
            if live.record.app_class == graph.name:
                self._rekey(live)

    def _rekey(self, live: LiveRun) -> None:
        """Its class's graph changed: restate the run in the new graph; the engine re-ranks its
        waiting calls."""
        self.engine.restate(live.record.app_id, *self._graph_position(live))
