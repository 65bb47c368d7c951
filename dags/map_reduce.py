"""Map-reduce summarisation as an Airflow DAG of Hermesflow steps.

    split (native: chunk the document) ─▶ summarize (llm, mapped: one task per chunk)
                                       ─▶ combine (llm) ─▶ the summary

`summarize` is expanded over the chunks with dynamic task mapping, so the chunk count is the
fan-out of its node. The DAG compiles to the same application graph as
`dags/map_reduce_program.py`, the Semantic-Variable program of the same application: nodes
`split`, `summarize` (mapped) and `combine`, with the same prompt prefixes and token caps.
Every run is one Hermesflow application of class `summarize_map_reduce`, ranked by the
Gittins index over the DAG's PDGraph. Params are those of the reference `map_reduce` class: a
shipped document (`doc_id`) or your own `text`, at most `max_chunks` chunks.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from hermesflow.apps.map_reduce import MapReduceInputs
from hermesflow.apps.tools import chunk_text, load_document
from hermesflow.operators.llm_step import LLMStepOperator

SUMMARIZE_PROMPT = "Summarise this passage in one sentence.\n\nPassage: {{ passage }}\nSummary:"
COMBINE_PROMPT = (
    "Combine these summaries into one short paragraph.\n\nSummaries:\n"
    "{% for summary in summaries %}- {{ summary }}\n{% endfor %}Paragraph:"
)

with DAG(
    dag_id="summarize_map_reduce",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "doc_id": Param("water-cycle", type=["null", "string"], description="a shipped document"),
        "text": Param(None, type=["null", "string"], description="or your own text"),
        "max_chunks": Param(16, type="integer", minimum=1, maximum=32),
    },
    tags=["hermesflow", "example"],
    doc_md=__doc__,
):

    @task
    def split(params: dict | None = None) -> list[dict[str, str]]:
        """One `inputs` dict per chunk: a shipped document's chunks, or the text cut the same way."""
        inputs = MapReduceInputs.model_validate(dict(params or {}))
        if inputs.doc_id is not None:
            chunks = load_document(inputs.doc_id)["chunks"]
        else:
            chunks = chunk_text(inputs.text or "")
        return [{"passage": chunk} for chunk in chunks[: inputs.max_chunks]]

    summarize = LLMStepOperator.partial(
        task_id="summarize", prompt=SUMMARIZE_PROMPT, max_tokens=48
    ).expand(inputs=split())

    LLMStepOperator(
        task_id="combine",
        prompt=COMBINE_PROMPT,
        inputs={"summaries": summarize.output},
        max_tokens=96,
    )
