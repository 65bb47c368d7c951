"""A ReAct agent as an Airflow DAG: think, then search or calculate, then think again — the
loop unrolled into rounds, with a branch deciding each round's way.

    think_1 ─▶ decide_1 ─┬▶ search_1 ────┬▶ think_2 ─▶ decide_2 ─┬▶ search_2 ────┬▶ think_3 ─▶ answer
                         ├▶ calculate_1 ─┘                      ├▶ calculate_2 ─┘
                         └▶ answer                              └▶ answer

`think_k` is an LLM step whose chat messages a Python function builds (`@task.hermes_llm`) from
the question and the rounds so far; `decide_k` (`@task.branch`) parses its reply with the same
parser as the reference `react` program and follows `search_k`, `calculate_k` or `answer`.
Tool errors come back as observations (`fail_on_error=False`), as in ReAct. The last round
must answer. `answer` runs after whichever way the run took (trigger rule
`none_failed_min_one_success`), so the DAG's PDGraph gives each way its probability and the
scheduler ranks the run by how much work its remaining rounds are likely to cost.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from hermesflow.apps.react import (
    CALCULATE,
    OBSERVATION_MAX_CHARS,
    SEARCH,
    SEARCH_K,
    THINK_MAX_TOKENS,
    parse_action,
    think_call,
)
from hermesflow.apps.suite_steps import CALCULATOR_TOOL, SEARCH_BACKEND, SEARCH_TOOL, clip
from hermesflow.operators.tool_step import ToolStepOperator

ROUNDS = 3
ANY_WAY = "none_failed_min_one_success"
ACTION_KEY = "action"
"""XCom key under which `decide_k` leaves the action it chose: {"action", "input"}."""


def _trace(ti: Any, rounds: int) -> list[dict[str, str]]:
    """The first `rounds` rounds as the ReAct prompt shows them: action, input, observation."""
    trace = []
    for k in range(1, rounds + 1):
        step = ti.xcom_pull(task_ids=f"decide_{k}", key=ACTION_KEY)
        if step is None or step["action"] not in (SEARCH, CALCULATE):
            break
        observation = ti.xcom_pull(task_ids=f"{step['action']}_{k}")
        trace.append({**step, "observation": clip(str(observation), OBSERVATION_MAX_CHARS)})
    return trace


with DAG(
    dag_id="react_agent",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    params={"question": Param("What is 12 * 7 + 5?", type="string", minLength=1)},
    tags=["hermesflow", "example"],
    doc_md=__doc__,
):

    @task.hermes_llm(max_tokens=THINK_MAX_TOKENS)
    def think(round_number: int, params: dict | None = None, ti: Any = None) -> list:
        trace = _trace(ti, round_number - 1)
        return think_call(params["question"], trace, last_round=round_number == ROUNDS).messages

    @task.branch
    def decide(reply: str, round_number: int, params: dict | None = None, ti: Any = None) -> str:
        action = parse_action(reply, params["question"], last_round=False)
        ti.xcom_push(key=ACTION_KEY, value={"action": action.kind, "input": action.argument})
        return "answer" if action.kind == "answer" else f"{action.kind}_{round_number}"

    @task(trigger_rule=ANY_WAY)
    def answer(params: dict | None = None, ti: Any = None) -> dict[str, Any]:
        """The first round's answer, or what the last round's reply says."""
        for k in range(1, ROUNDS):
            step = ti.xcom_pull(task_ids=f"decide_{k}", key=ACTION_KEY)
            if step is not None and step["action"] == "answer":
                return {"answer": step["input"], "rounds": k}
        reply = ti.xcom_pull(task_ids=f"think_{ROUNDS}") or ""
        final = parse_action(reply, params["question"], last_round=True)
        return {"answer": final.argument, "rounds": ROUNDS}

    after_tools: list[ToolStepOperator] = []
    answer_upstream = []
    for k in range(1, ROUNDS + 1):
        rule = ANY_WAY if after_tools else "all_success"
        reply = think.override(task_id=f"think_{k}", trigger_rule=rule)(round_number=k)
        after_tools >> reply
        if k == ROUNDS:
            answer_upstream.append(reply)
            break
        branch = decide.override(task_id=f"decide_{k}")(reply, round_number=k)
        argument = f"{{{{ ti.xcom_pull(task_ids='decide_{k}', key='{ACTION_KEY}')['input'] }}}}"
        after_tools = [
            ToolStepOperator(
                task_id=f"{SEARCH}_{k}",
                backend=SEARCH_BACKEND,
                tool=SEARCH_TOOL,
                args={"query": argument, "k": SEARCH_K},
                returns="text",
                fail_on_error=False,
            ),
            ToolStepOperator(
                task_id=f"{CALCULATE}_{k}",
                tool=CALCULATOR_TOOL,
                args={"expression": argument},
                returns="text",
                fail_on_error=False,
            ),
        ]
        branch >> after_tools
        answer_upstream.append(branch)
    answer_upstream >> answer()
