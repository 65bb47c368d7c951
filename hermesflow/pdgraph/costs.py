"""The cost model: how many backend-seconds a request needs, and how long it takes alone.

An LLM engine with continuous batching runs one decode iteration for all its running requests
at once. Its iteration time grows with the batch:

    t_iter(n) = t_fixed + t_seq * n,   with t_iter(max_batch) = max_batch * decode_s_per_token

where `fixed_fraction` = t_fixed / t_iter(max_batch) is the share of an iteration that does not
depend on the batch (reading the weights: decode is memory-bound). Besides `max_batch` sequences,
the running requests must fit the engine's KV cache of `kv_tokens` tokens; a request holds its
input plus output tokens while it runs. A request's *work* is measured in engine-seconds
at full batch,

    work = input_tokens * prefill_s_per_token + output_tokens * decode_s_per_token,

so an engine that runs a full batch delivers exactly one second of work per second (its
capacity), and a smaller batch delivers n * decode_s_per_token / t_iter(n) < 1. Tool, search,
DNN and code stages take their execution time on one slot of their backend.

A request that ran a long-context attention method (`AttentionMethod`) is priced with that
method's rates where the engine has them (`LLMEngineCost.attention`, measured by
`schedulers/calibration.py` from the calls that ran it): sparse prefill changes the prefill rate,
RetrievalAttention the decode rate (and its prefill, which builds the index). A method without
measured rates is priced like dense attention: no saving is assumed before one is seen.

The same numbers drive the simulator's engine and the demand estimates of the policies, so the
two cannot disagree about what a request costs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from hermesflow.pdgraph.model import LLM_BACKEND, AttentionMethod


class AttentionCost(BaseModel):
    """The rates of one attention method on one engine; a rate left out is dense attention's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_s_per_token: PositiveFloat | None = None
    decode_s_per_token: PositiveFloat | None = None


class LLMEngineCost(BaseModel):
    """Timing of one LLM engine. Defaults: a 7-8B model on one A100-class GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_s_per_token: PositiveFloat = 5e-5
    decode_s_per_token: PositiveFloat = 5e-4
    max_batch: PositiveInt = 32
    kv_tokens: PositiveInt = 65_536
    fixed_fraction: float = Field(default=0.5, ge=0.0, lt=1.0)
    prefill_stalls: bool = False
    """True when admitting a request runs its prefill as a forward pass of its own that pauses
    the batch (the CPU transformers engine); False when prefill is chunked into the batch's
    iterations and shared like decode (vLLM's default)."""
    attention: dict[AttentionMethod, AttentionCost] = Field(default_factory=dict)
    """Rates of the long-context methods measured on this engine (dense uses the fields above)."""

    @property
    def full_iteration_s(self) -> float:
        return self.max_batch * self.decode_s_per_token

    def iteration_s(self, batch: int) -> float:
        """t_iter(n) of the module docstring."""
        fixed = self.fixed_fraction * self.full_iteration_s
        per_sequence = (1.0 - self.fixed_fraction) * self.decode_s_per_token
        return fixed + per_sequence * batch

    def work_rate_per_request(self, batch: int) -> float:
        """Work-seconds per second each of `batch` running requests receives."""
        return self.decode_s_per_token / self.iteration_s(batch)

    def rates(self, method: AttentionMethod | None = AttentionMethod.DENSE) -> tuple[float, float]:
        """(prefill, decode) seconds per token of a request that ran attention `method` (None:
        not recorded, priced dense); a method without measured rates has dense attention's."""
        measured = self.attention.get(method) if method else None
        if measured is None:
            return self.prefill_s_per_token, self.decode_s_per_token
        return (
            measured.prefill_s_per_token or self.prefill_s_per_token,
            measured.decode_s_per_token or self.decode_s_per_token,
        )

    def work_s(
        self,
        input_tokens: float,
        output_tokens: float,
        method: AttentionMethod | None = AttentionMethod.DENSE,
    ) -> float:
        """The module docstring's work at the rates of `method`; takes numpy arrays of tokens."""
        prefill, decode = self.rates(method)
        return input_tokens * prefill + output_tokens * decode


class CostModel(BaseModel):
    """Per-backend timings: LLM engines by backend name, tools by their measured seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: dict[str, LLMEngineCost] = Field(default_factory=lambda: {LLM_BACKEND: LLMEngineCost()})
    tool_time_scale: PositiveFloat = 1.0

    def engine(self, backend: str) -> LLMEngineCost:
        try:
            return self.llm[backend]
        except KeyError:
            raise KeyError(
                f"no LLM engine timing for backend {backend!r}; add it to CostModel.llm "
                f"(known: {sorted(self.llm)})"
            ) from None
