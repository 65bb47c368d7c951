"""The vague sizes a stage starts from before anything of it was observed.

Open classes (`schedulers/open_apps.py`) and compiled application graphs
(`hermesflow/apps/app_graph.py`) both declare stages whose sizes nobody has measured yet: a
typical chat turn for an LLM stage, one second for any other. The refit replaces them with the
observed values as runs finish, so they only need to be plausible, and the same everywhere.
"""

from __future__ import annotations

from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import StageKind

PRIOR_INPUT_TOKENS = 256
PRIOR_OUTPUT_TOKENS = 64
PRIOR_EXEC_S = 1.0


def prior_sizes(kind: StageKind, output_tokens: int | None = None) -> dict[str, Empirical]:
    """The size fields of a new stage of `kind`: tokens for LLM stages (`output_tokens` when the
    caller knows the cap), seconds for the others."""
    if kind is StageKind.LLM:
        return {
            "input_tokens": Empirical(samples=(PRIOR_INPUT_TOKENS,), unit="tokens"),
            "output_tokens": Empirical(
                samples=(float(output_tokens or PRIOR_OUTPUT_TOKENS),), unit="tokens"
            ),
        }
    return {"exec_s": Empirical(samples=(PRIOR_EXEC_S,), unit="s")}
