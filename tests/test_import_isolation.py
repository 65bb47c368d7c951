"""The scheduling core and the data cache import without Ray or Airflow: the simulator, the CLI
and the tests must run on a machine that has neither, and the cache serves Airflow workers and
plain scripts too. Checked in a fresh interpreter, so other tests' imports do not hide a stray
dependency."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("airflow", "ray")
PACKAGES = ("hermesflow.pdgraph", "hermesflow.schedulers", "hermesflow.cache")
EXCLUDED = {
    "hermesflow.schedulers.runtime",
    "hermesflow.schedulers.runtime_backends",
    "hermesflow.schedulers.runtime_driver",
    "hermesflow.schedulers.runtime_experiment",
}
"""The Ray runtime: the scheduler actor, its backend slots, its run driver (which runs calls on
the slots) and its experiment driver are the modules of these packages allowed to import Ray."""

_PROBE = f"""
import importlib, json, pkgutil, sys
import hermesflow
names = ["hermesflow"]
for package in {PACKAGES!r}:
    module = importlib.import_module(package)
    names.append(package)
    names += [f"{{package}}.{{m.name}}" for m in pkgutil.iter_modules(module.__path__)]
names = [n for n in names if n not in {sorted(EXCLUDED)!r}]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print(json.dumps({{"imported": names, "heavy": heavy}}))
"""


def test_core_modules_import_without_ray_or_airflow() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        pytest.fail(f"importing the core failed:\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "hermesflow.schedulers.simulator" in report["imported"]
    assert "hermesflow.pdgraph.sampler" in report["imported"]
    assert report["heavy"] == []


PROVIDER_PACKAGES = ("hermesflow.operators", "hermesflow.plugins")
DAGS = Path(__file__).resolve().parents[1] / "dags"

_PROVIDER_PROBE = f"""
import importlib, json, pkgutil, runpy, sys
names = []
for package in {PROVIDER_PACKAGES!r}:
    module = importlib.import_module(package)
    names += [package] + [f"{{package}}.{{m.name}}" for m in pkgutil.iter_modules(module.__path__)]
for name in names:
    importlib.import_module(name)
for path in sys.argv[1:]:
    runpy.run_path(path)
ray = sorted(m for m in sys.modules if m.split(".")[0] == "ray")
print(json.dumps({{"imported": names, "ray": ray}}))
"""


def test_airflow_provider_and_dags_import_without_ray(tmp_path: Path) -> None:
    """Airflow's workers and triggerer reach Hermesflow over HTTP only: the provider, the plugin
    and the example DAGs must not start (or even import) a Ray driver."""
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("Airflow is not installed (the `airflow` extra)")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    dag_files = [str(path) for path in sorted(DAGS.glob("*.py"))]
    done = subprocess.run(
        [sys.executable, "-c", _PROVIDER_PROBE, *dag_files],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if done.returncode != 0:
        pytest.fail(f"importing the provider failed:\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "hermesflow.operators.listener" in report["imported"]
    assert "hermesflow.plugins.plugin" in report["imported"]
    assert report["ray"] == []
