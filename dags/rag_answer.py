"""Retrieval-augmented answering: search the corpus, then answer from the passages found.

    retrieve (search) ─▶ answer (llm)

Both are Hermesflow steps of one application (the DAG run), so while `retrieve` runs the
scheduler already knows an LLM step follows and can warm the model in time.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from hermesflow.operators.llm_step import LLMStepOperator
from hermesflow.operators.tool_step import ToolStepOperator

SYSTEM = "Answer the question in one sentence, using only the passages."
QUESTION = "Passages:\n{{ passages }}\n\nQuestion: {{ params.question }}\nAnswer:"

with DAG(
    dag_id="rag_answer",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "question": Param("When was smallpox declared eradicated?", type="string", minLength=1)
    },
    tags=["hermesflow", "example"],
    doc_md=__doc__,
):
    retrieve = ToolStepOperator(
        task_id="retrieve",
        backend="search",
        tool="search",
        args={"query": "{{ params.question }}", "k": 2},
        returns="text",
    )
    LLMStepOperator(
        task_id="answer",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        inputs={"passages": retrieve.output},
        max_tokens=48,
    )
