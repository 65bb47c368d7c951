"""The ordering policies: Hermesflow's Gittins index on the PDGraph state, and the baselines.

Each policy is one short `key` method over an application's record (smaller key = served
first). `make_policy` builds one by its command-line name.

| name             | key                                                             | source            |
|------------------|-----------------------------------------------------------------|-------------------|
| fcfs             | time the request was queued (request-level FIFO)                | vLLM              |
| app-fifo         | arrival time of the application                                 | Parrot            |
| vtc              | virtual token counter of the application, lifted on arrival     | VTC (OSDI'24)     |
| las              | attained service of the application                             | Autellix PLAS     |
| srjf-mean        | mean remaining demand from the PDGraph state                    | Hermes ablation   |
| hermes           | Gittins index of the class's demand given attained service      | Hermes            |
| hermes-simplified| the same with the authors' simplified index                     | Hermes code       |
| gittins          | Gittins index of the remaining demand from the PDGraph state    | Hermesflow        |
| srpt             | true remaining demand (clairvoyant lower bound, simulator only) | oracle            |
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.interface import AppRecord, Policy, RequestRecord


class RequestFCFS(Policy):
    name = "fcfs"
    description = "request-level first come first served (vLLM's default)"

    def key(self, request: RequestRecord) -> float:
        return request.ready_s


class AppFIFO(Policy):
    name = "app-fifo"
    description = "application-level FIFO: earlier applications first (Parrot)"

    def key(self, request: RequestRecord) -> float:
        return request.app.arrival_s


class VirtualTokenCounter(Policy):
    """Fair share (VTC): each application is a client with a counter of the backend-seconds it
    received; the smallest counter goes first. A newly arrived client's counter is lifted to the
    smallest counter among active clients, so an idle period earns no credit."""

    name = "vtc"
    description = "virtual token counter fair share, one client per application"

    def __init__(self, demand: DemandEstimator) -> None:
        super().__init__(demand)
        self._counters: dict[int, float] = {}

    def key(self, request: RequestRecord) -> float:
        return self._counters[request.app.app_id]

    def on_admit(self, app: AppRecord, now: float) -> None:
        self._counters[app.app_id] = min(self._counters.values(), default=0.0)

    def on_service(self, app: AppRecord, work_s: float, now: float) -> None:
        self._counters[app.app_id] += work_s

    def on_finish(self, app: AppRecord, now: float) -> None:
        del self._counters[app.app_id]


class LeastAttainedService(Policy):
    name = "las"
    description = "program-level least attained service (Autellix PLAS)"

    def key(self, request: RequestRecord) -> float:
        return request.app.attained_s


class MeanRemainingSRJF(Policy):
    name = "srjf-mean"
    description = "shortest mean remaining demand first, from the PDGraph state"

    def key(self, request: RequestRecord) -> float:
        return self.demand.mean_remaining(request.app.state)


class HermesGittins(Policy):
    """The Hermes paper's index: the class's whole-run demand distribution conditioned only on
    the scalar attained service, R = S - a given S > a."""

    name = "hermes"
    description = "Gittins index on the class demand and scalar attained service (Hermes)"
    simplified = False

    def key(self, request: RequestRecord) -> float:
        app = request.app
        return self.demand.gittins_attained(app.app_class, app.attained_s, simplified=self.simplified)


class HermesGittinsSimplified(HermesGittins):
    name = "hermes-simplified"
    description = "Hermes with the authors' released index (drops the r_j * P(R > r_j) term)"
    simplified = True


class StateGittins(Policy):
    name = "gittins"
    description = "Gittins index of the remaining demand from the PDGraph state (Hermesflow)"

    def key(self, request: RequestRecord) -> float:
        return self.demand.gittins(request.app.state)


class ClairvoyantSRPT(Policy):
    name = "srpt"
    description = "shortest true remaining demand first (clairvoyant lower bound; simulator only)"
    needs_oracle = True

    def key(self, request: RequestRecord) -> float:
        remaining = request.app.true_remaining_s
        if remaining is None:
            raise ValueError(
                "policy 'srpt' needs each application's true remaining demand, which only the "
                "simulator knows; choose another policy (e.g. 'gittins') for real runs"
            )
        return remaining


POLICIES: Mapping[str, type[Policy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            RequestFCFS,
            AppFIFO,
            VirtualTokenCounter,
            LeastAttainedService,
            MeanRemainingSRJF,
            HermesGittins,
            HermesGittinsSimplified,
            StateGittins,
            ClairvoyantSRPT,
        )
    }
)


def make_policy(name: str, demand: DemandEstimator) -> Policy:
    """Build a policy by its command-line name."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}") from None
    return cls(demand)
