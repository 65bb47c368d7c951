"""The `search` tool's signature and arguments, apart from the index that serves it.

`SearchIndex` (`search.py`) needs torch and transformers; its signature does not. The scheduler
checks each tool call against the signature of its backend before queueing it, and the signature
travels there from the backend actor by reference to `SearchArgs`: defined here, it imports in
the scheduler's process without loading torch.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hermesflow.backends.tools import ToolSignature


class SearchArgs(BaseModel):
    """The arguments of `search`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    k: Annotated[int, Field(ge=1)] = 3


SEARCH = ToolSignature.of_model(
    "search", SearchArgs, "Find the k passages of the corpus closest in meaning to the query."
)
