"""`HermesflowPlugin`: what Hermesflow adds to every Airflow component.

For now the listener that reports task outcomes and DAG-run ends to Hermesflow
(`hermesflow.operators.listener`). Registered through the `airflow.plugins` entry point, which
Airflow always loads — a `plugins` entry in the provider info is ignored while providers are
discovered lazily (docs/STACK §9).
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from hermesflow.operators import listener


class HermesflowPlugin(AirflowPlugin):
    name = "hermesflow"
    listeners: ClassVar[list[ModuleType]] = [listener]
