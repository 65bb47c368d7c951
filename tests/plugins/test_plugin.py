"""Loading the plugin stays cheap: every Airflow component and every task imports it for the
listener, and only the api-server serves the app, so the app is built on its first request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("airflow")

_PROBE = """
import json, sys
from hermesflow.plugins.plugin import HermesflowPlugin
print(json.dumps({
    "apps": [app["url_prefix"] for app in HermesflowPlugin.fastapi_apps],
    "heavy": sorted(m for m in ("fastapi", "airflow.api_fastapi.core_api.security") if m in sys.modules),
}))
"""


def test_loading_the_plugin_builds_no_app(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"apps": ["/hermesflow"], "heavy": []}
