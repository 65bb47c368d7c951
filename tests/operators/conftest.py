"""Fixtures of the Airflow provider's tests: Airflow 3 on SQLite in the session's throwaway
AIRFLOW_HOME (set up by the root conftest, before any test module imports Airflow), the real
Hermesflow HTTP API (scheduler + gateway with the CPU LLM, search and the tool pool) on the
session's Ray cluster, and `airflow dags test` as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from provider_support import AIRFLOW, Hermes

HERMES_BACKENDS = ("llm", "search", "tools")
"""The served backends: the suite's, but code execution (no DAG here uses it)."""

@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """AIRFLOW_HOME with a migrated SQLite metadata database (once per session)."""
    done = subprocess.run(
        [AIRFLOW, "db", "migrate"], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return Path(os.environ["AIRFLOW_HOME"])


# ---------------------------------------------------------------------------------------------
# The Hermesflow HTTP API
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hermes(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hermes]:
    """A Gittins scheduler with the CPU LLM, search and the tool pool (all warm), the test
    program `sleep_chain`, and a gateway with a token; the `hermesflow_default` Airflow
    connection points at it (through the environment, so `airflow dags test` sees it too)."""
    from support.serving import serving, wait_warm

    from hermesflow.apps.suite import suite_backends
    from hermesflow.schedulers.runtime_config import RuntimeConfig

    token = f"airflow-provider-{uuid.uuid4().hex}"
    db_url = f"sqlite:///{tmp_path_factory.mktemp('hermes') / 'hermes.db'}"
    config = RuntimeConfig(
        db_url=db_url,
        backends=[b for b in suite_backends() if b.name in HERMES_BACKENDS],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=HERMES_BACKENDS,
    )
    with serving(config, token, "af-op") as api:
        served = Hermes(api.url, token, db_url)
        wait_warm(api.url, token, HERMES_BACKENDS, 300.0)
        host_port = api.url.removeprefix("http://")
        os.environ["AIRFLOW_CONN_HERMESFLOW_DEFAULT"] = f"hermesflow://:{token}@{host_port}"
        try:
            yield served
        finally:
            os.environ.pop("AIRFLOW_CONN_HERMESFLOW_DEFAULT", None)


