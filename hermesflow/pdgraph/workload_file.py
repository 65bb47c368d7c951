"""Read application classes from a workload file (schema `hermesflow.app_workload.v1`).

The file format is the one of `shared/data/workloads/README.md`; the nine Hermes classes ship
inside the package (`hermesflow/data/hermes_apps.json`). Where a stage has both the ten traced
samples and the larger profiling set, the profiling set is used for token counts: it is the
larger sample of the same quantity.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import PDGraph

SCHEMA = "hermesflow.app_workload.v1"
_KIND_ALIASES = {"docker": "code"}


class WorkloadFileError(ValueError):
    """A workload file that cannot be read; the message names the file, class, stage and field."""


def hermes_mix() -> dict[str, PDGraph]:
    """The nine application classes of the Hermes paper, as shipped in the package."""
    text = resources.files("hermesflow.data").joinpath("hermes_apps.json").read_text()
    return parse_workload(json.loads(text), source="hermesflow/data/hermes_apps.json")


def load_workload(path: str | Path) -> dict[str, PDGraph]:
    """Load every class of a workload file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise WorkloadFileError(f"{path}: no such workload file") from err
    except OSError as err:  # a folder, no permission
        raise WorkloadFileError(f"{path}: cannot read it ({err.strerror})") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WorkloadFileError(f"{path}: not valid JSON ({err})") from err
    return parse_workload(document, source=str(path))


def parse_workload(document: Any, source: str = "<workload>") -> dict[str, PDGraph]:
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise WorkloadFileError(f"{source}: field 'schema' is {found!r}; expected {SCHEMA!r}")
    apps = document.get("apps")
    if not isinstance(apps, dict) or not apps:
        raise WorkloadFileError(f"{source}: field 'apps' must map class names to classes")
    return {name: _parse_class(name, raw, source) for name, raw in apps.items()}


def _parse_class(name: str, raw: Any, source: str) -> PDGraph:
    if not isinstance(raw, dict):
        raise WorkloadFileError(f"{source}: class {name!r} must be an object")
    try:
        stages = {
            stage: _parse_stage(stage, spec) for stage, spec in (raw.get("stages") or {}).items()
        }
        return PDGraph(name=name, entry=raw.get("entry") or {}, stages=stages)
    except ValidationError as err:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc']) or '(class)'}: {e['msg']}"
            for e in err.errors()
        )
        raise WorkloadFileError(f"{source}: class {name!r}: {problems}") from None
    except (TypeError, AttributeError, ValueError) as err:
        raise WorkloadFileError(f"{source}: class {name!r}: {err}") from None


def _parse_stage(name: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ValueError(f"stage {name!r} must be an object, not {type(spec).__name__}")
    kind = _KIND_ALIASES.get(spec.get("kind"), spec.get("kind"))
    stage: dict[str, Any] = {"kind": kind, "next": spec.get("next")}
    for field in ("input_tokens", "output_tokens", "fanout", "exec_s"):
        if field in spec:
            stage[field] = _distribution(spec[field], prefer_profile=field != "fanout")
    loops = (spec.get("profile") or {}).get("loops")
    if loops and any(count != 1 for count in loops):
        stage["visits"] = Empirical.of(loops, unit="visits")
    for field in ("backend", "attention"):
        if field in spec:
            stage[field] = spec[field]
    return stage


def _distribution(raw: dict[str, Any], prefer_profile: bool) -> dict[str, Any]:
    samples = raw.get("profile_samples") if prefer_profile else None
    return {"samples": samples or raw.get("samples") or (), "unit": raw.get("unit", "")}
