"""Calibrating the simulator from a real run, and checking how well it then predicts.

The simulator's LLM engine follows `LLMEngineCost`: a decode iteration over n running requests
takes t_iter(n) = t_fixed + t_seq * n, prefill costs `prefill_s_per_token` per input token. A
real run stores every call's `CallResult`; an LLM call's decode time over its decode steps is
one sample of t_iter at its mean batch size, so a least-squares line through those samples
gives t_fixed and t_seq, and prefill seconds over input tokens the prefill rate. Tool stages
need no model: the refit PDGraphs carry their measured seconds.

`fidelity` then replays the real run through the simulator — the same arrival times and, with
`observed_plans`, the very runs that happened (stages, fan-outs, tokens, tool seconds) — with
the run's own refitted PDGraphs (what the policy and planner believe), its calibrated engine and
its measured warm-up times, under the same policy and planner, and compares mean ACT. Without
observed plans it draws runs from the refitted graphs instead (a coarser check).

The same pieces measure the load a real run offered, whatever the machine: `calibrate_engine`
fits the engine from a short warm-up probe before the runs (`runtime_experiment.probe_engine`),
`offered_load` prices the LLM work the run's applications really brought at that speed (each
request at the rates of the attention method it ran), and
`busy_share` reads how much of the run the engine spent computing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hermesflow.backends.calls import AttentionMethod, CallResult
from hermesflow.journal import RunJournal
from hermesflow.pdgraph.costs import AttentionCost, CostModel, LLMEngineCost
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import PDGraph
from hermesflow.pdgraph.refit import StageObservation, refit
from hermesflow.pdgraph.sampler import PlannedRequest, PlannedStage, RunPlan
from hermesflow.schedulers.policies import make_policy
from hermesflow.schedulers.prewarm import make_planner
from hermesflow.schedulers.simulator import SimulationConfig, Simulator
from hermesflow.schedulers.workload import Arrival
from hermesflow.store import Store
from hermesflow.store_schema import DecisionKind, RunRow

MIN_CALLS = 5
"""Fewer timed LLM calls than this give no calibration (the prior cost model stays)."""


def calibrate_engine(results: Sequence[CallResult], prior: LLMEngineCost) -> LLMEngineCost:
    """The engine timing that best explains the calls' measured prefill and decode times.

    The dense rates come from the calls that ran dense attention (`CallResult.attention`) alone:
    a sparse prefill or a retrieval decode has rates of its own, and would misprice every dense
    call. Each long-context method seen in at least `MIN_CALLS` calls gets its own rates
    (`_method_rates`), so the cost model prices what the method saves, or costs, on this engine.
    """
    dense = [r for r in results if r.attention in (None, AttentionMethod.DENSE)]
    engine = _dense_engine(dense, prior)
    measured = dict(prior.attention)
    for method in AttentionMethod:
        ran = [r for r in results if r.attention is method]
        if method is not AttentionMethod.DENSE and len(ran) >= MIN_CALLS:
            measured[method] = _method_rates(ran, engine)
    return engine.model_copy(update={"attention": measured})


def _dense_engine(dense: Sequence[CallResult], prior: LLMEngineCost) -> LLMEngineCost:
    """t_fixed and t_seq by least squares over the decode samples, and the prefill rate."""
    decoded = [r for r in dense if r.output_tokens > 1 and r.decode_s > 0]
    prefilled = [r for r in dense if r.input_tokens > 0 and r.prefill_s > 0]
    if len(decoded) < MIN_CALLS or len(prefilled) < MIN_CALLS:
        return prior
    batch = np.array([r.batch_size for r in decoded], dtype=float)
    t_iter = np.array([_iteration_s(r) for r in decoded])
    if np.ptp(batch) > 0:
        t_seq, t_fixed = np.polyfit(batch, t_iter, 1)
    else:  # one batch size seen: attribute it all per sequence, keep the prior's split
        t_fixed = prior.fixed_fraction * float(t_iter.mean())
        t_seq = (float(t_iter.mean()) - t_fixed) / batch[0]
    t_fixed, t_seq = max(float(t_fixed), 0.0), max(float(t_seq), 1e-6)
    full = t_fixed + t_seq * prior.max_batch
    return prior.model_copy(
        update={
            "decode_s_per_token": full / prior.max_batch,
            "fixed_fraction": min(t_fixed / full, 0.95),
            "prefill_s_per_token": _prefill_rate(prefilled),
        }
    )


def _method_rates(ran: Sequence[CallResult], dense: LLMEngineCost) -> AttentionCost:
    """One method's rates from the calls that ran it: its prefill seconds per prompt token,
    and its decode rate as the dense rate scaled by how much longer (or shorter) its decode
    iterations took than the dense engine's t_iter at the same batch sizes. A rate with no
    sample (no call of the method decoded) is left to dense attention's."""
    prefilled = [r for r in ran if r.input_tokens > 0 and r.prefill_s > 0]
    decoded = [r for r in ran if r.output_tokens > 1 and r.decode_s > 0]
    decode = None
    if decoded:
        measured = sum(_iteration_s(r) for r in decoded)
        predicted = sum(dense.iteration_s(r.batch_size) for r in decoded)
        decode = dense.decode_s_per_token * measured / predicted
    return AttentionCost(
        prefill_s_per_token=_prefill_rate(prefilled) if prefilled else None,
        decode_s_per_token=decode,
    )


def _iteration_s(result: CallResult) -> float:
    """One decode iteration of a call: its decode seconds over its decode steps."""
    return result.decode_s / (result.output_tokens - 1)


def _prefill_rate(prefilled: Sequence[CallResult]) -> float:
    return sum(r.prefill_s for r in prefilled) / sum(r.input_tokens for r in prefilled)


def learned_from_run(
    db_url: str, priors: Mapping[str, PDGraph], prior_costs: CostModel, min_samples: int = 3
) -> tuple[dict[str, PDGraph], CostModel]:
    """The PDGraphs refitted from a run's observations and the engine calibrated from its LLM
    calls, read from the run's store."""
    store = Store(db_url)
    journal = RunJournal(store)
    graphs = {}
    for name, prior in priors.items():
        observations = store.observations(name, limit=10_000)
        graphs[name] = refit(prior, observations, window=10_000, min_samples=min_samples) if observations else prior
    engines = {
        backend: calibrate_engine(
            [CallResult.model_validate(r) for r in journal.call_results(backend)], engine
        )
        for backend, engine in prior_costs.llm.items()
    }
    store.close()
    return graphs, prior_costs.model_copy(update={"llm": engines})


def _observations_by_run(db_url: str) -> tuple[list[RunRow], dict[int, list[StageObservation]]]:
    """Every run of a store in admission order, and every observation of each."""
    store = Store(db_url)
    runs = store.runs()
    by_run: dict[int, list[StageObservation]] = {run.id: [] for run in runs}
    for app_class in {run.app_class for run in runs}:
        for obs in store.observations(app_class, limit=1_000_000):
            by_run[obs.run_id].append(obs)
    store.close()
    return runs, by_run


def observed_plans(db_url: str, costs: CostModel) -> list[RunPlan]:
    """The runs of a real experiment as they happened — every stage, fan-out and token count —
    in admission order, with LLM work priced by `costs` (the calibrated engine)."""
    runs, by_run = _observations_by_run(db_url)
    plans = []
    for run in runs:
        stages = []
        for obs in sorted(by_run[run.id], key=lambda o: o.step):
            if obs.backend in costs.llm:
                engine = costs.engine(obs.backend)
                methods = obs.attention or (AttentionMethod.DENSE,) * obs.fanout
                requests = tuple(
                    PlannedRequest(engine.work_s(i, o, m), i, o, m)
                    for i, o, m in zip(obs.input_tokens, obs.output_tokens, methods, strict=True)
                )
            else:
                requests = tuple(PlannedRequest(s) for s in obs.exec_s)
            stages.append(PlannedStage(obs.stage, obs.backend, requests))
        plans.append(RunPlan(run.app_class, tuple(stages)))
    return plans


def offered_load(db_url: str, backend: str, engine: LLMEngineCost, arrival_span_s: float) -> float:
    """The load a real run offered `backend`: the LLM work of every step its applications ran
    there (their real token counts, priced by `engine`, the speed measured on this machine),
    per second of the span in which they arrived, over the engine's capacity of one
    engine-second of work per second (`pdgraph/costs.py`) — the quantity `--load` asks for."""
    if arrival_span_s <= 0:
        raise ValueError(f"arrival span is {arrival_span_s} s; give the positive span the applications arrived in")
    _, by_run = _observations_by_run(db_url)
    work = sum(
        engine.work_s(i, o, m)
        for observations in by_run.values()
        for obs in observations
        if obs.backend == backend
        for i, o, m in zip(
            obs.input_tokens, obs.output_tokens, obs.attention or (AttentionMethod.DENSE,) * obs.fanout, strict=True
        )
    )
    return work / arrival_span_s


def busy_share(db_url: str, backend: str, start_s: float, end_s: float) -> float:
    """Share of [start_s, end_s] (unix seconds) in which `backend` was computing: the union of
    its calls' own spans, each ending at its completion and lasting the seconds the backend
    measured for it (an LLM call's span runs from its prefill to its last token)."""
    if end_s <= start_s:
        raise ValueError(f"the window [{start_s}, {end_s}] is empty; give end_s > start_s")
    store = Store(db_url)
    spans = sorted(
        (max(d.at_s - d.detail["seconds"], start_s), min(d.at_s, end_s))
        for d in store.decisions()
        if d.kind is DecisionKind.COMPLETE and d.backend == backend and d.detail
    )
    store.close()
    busy, covered_to = 0.0, start_s
    for begin, end in spans:
        begin = max(begin, covered_to)
        if end > begin:
            busy += end - begin
            covered_to = end
    return busy / (end_s - start_s)


@dataclass(frozen=True, slots=True)
class Fidelity:
    """Mean ACT of a real run and of its simulated replay."""

    policy: str
    real_mean_act_s: float
    simulated_mean_act_s: float

    @property
    def difference(self) -> float:
        """(simulated - real) / real."""
        return self.simulated_mean_act_s / self.real_mean_act_s - 1.0


def fidelity(
    *,
    policy: str,
    planner: str,
    graphs: Mapping[str, PDGraph],
    costs: CostModel,
    arrivals: Sequence[Arrival],
    warmup_by_kind: Mapping[str, float],
    warm_at_start: Sequence[str],
    real_mean_act_s: float,
    seeds: Sequence[int] = (0, 1, 2),
    plans: Sequence[RunPlan] | None = None,
) -> Fidelity:
    """Replay the arrivals in the simulator: the observed `plans` when given (one replay), else
    run plans drawn from the graphs (mean over `seeds`)."""
    config = SimulationConfig(costs=costs, warmup_s=dict(warmup_by_kind), warm_at_start=tuple(warm_at_start))
    means = []
    for seed in seeds:
        demand = DemandEstimator(graphs, costs, seed=seed)
        simulator = Simulator(
            demand,
            make_policy(policy, demand),
            make_planner(planner, demand, pinned=config.warm_at_start),
            list(arrivals),
            seed,
            config,
            plans=plans,
        )
        means.append(float(simulator.run().acts.mean()))
        if plans is not None:
            break
    return Fidelity(policy, real_mean_act_s, float(np.mean(means)))
