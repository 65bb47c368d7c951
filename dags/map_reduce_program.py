"""Map-reduce summarisation as a Semantic-Variable program (no Airflow here).

    split (native: chunk the document) ─▶ summarize (llm, one request per chunk)
                                       ─▶ combine (llm) ─▶ the summary

It compiles to the same application graph as the Airflow DAG of the same application: nodes
`split`, `summarize` (mapped over the chunks) and `combine`, with the same prompt prefixes and
token caps. Register it with the runtime as `dags.map_reduce_program:program` (class
`summarize_map_reduce_program`); inputs are those of the reference `map_reduce` class — a
shipped document (`doc_id`) or your own `text`, at most `max_chunks` chunks.
"""

from __future__ import annotations

from hermesflow.apps.map_reduce import MapReduceInputs
from hermesflow.apps.semantic import native_function, semantic_function, semantic_program
from hermesflow.apps.suite_data import documents
from hermesflow.apps.tools import chunk_text, load_document

APP_CLASS = "summarize_map_reduce_program"


@native_function
def split(doc_id: str | None, text: str | None, max_chunks: int) -> list[str]:
    """The chunks to summarise: a shipped document's, or the given text cut the same way."""
    chunks = load_document(doc_id)["chunks"] if doc_id is not None else chunk_text(text or "")
    return chunks[:max_chunks]


@semantic_function(max_tokens=48)
def summarize(passage: str) -> str:
    """Summarise this passage in one sentence.

    Passage: {{passage}}
    Summary: {{summary}}"""


@semantic_function(max_tokens=96)
def combine(summaries: list[str]) -> str:
    """Combine these summaries into one short paragraph.

    Summaries:
    {{summaries}}
    Paragraph: {{paragraph}}"""


@semantic_program(
    app_class=APP_CLASS,
    inputs=MapReduceInputs,
    examples=[{"doc_id": doc.id} for doc in documents()],
)
def program(doc_id, text, max_chunks):
    summaries = summarize.map(split(doc_id, text, max_chunks))
    return {"summary": combine(summaries), "summaries": summaries}
