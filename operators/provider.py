"""What Airflow's provider discovery reads (the `apache_airflow_provider` entry point): the
connection type, hooks, operators, triggers and TaskFlow decorators of Hermesflow.

`name`, `description` and `package-name` are required: without `package-name`,
`airflow providers list` fails with a KeyError (docs/STACK §9).
"""

from __future__ import annotations

from typing import Any

PACKAGE = "hermesflow"
INTEGRATION = "Hermesflow"


def get_provider_info() -> dict[str, Any]:
    modules = "hermesflow.operators"
    return {
        "package-name": PACKAGE,
        "name": INTEGRATION,
        "description": "Serve LLM applications written as Airflow DAGs with Hermesflow: "
        "deferrable LLM, tool and program steps ranked by Gittins index over the DAG's PDGraph.",
        "integrations": [{"integration-name": INTEGRATION, "tags": ["software"]}],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": [f"{modules}.hook"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    f"{modules}.llm_step",
                    f"{modules}.tool_step",
                    f"{modules}.program_run",
                ],
            }
        ],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": [f"{modules}.triggers"]}],
        "connection-types": [
            {
                "connection-type": "hermesflow",
                "hook-class-name": f"{modules}.hook.HermesHook",
                "hook-name": "Hermesflow",
            }
        ],
        "task-decorators": [
            {"name": "hermes_llm", "class-name": f"{modules}.decorators.hermes_llm_task"},
            {"name": "hermes_tool", "class-name": f"{modules}.decorators.hermes_tool_task"},
        ],
    }
