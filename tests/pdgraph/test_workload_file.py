"""Tests for hermesflow.pdgraph.workload_file: the packaged Hermes mix and malformed files."""

from __future__ import annotations

import copy
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from hermesflow.pdgraph.model import END, AttentionMethod, PDGraph, StageKind
from hermesflow.pdgraph.workload_file import (
    SCHEMA,
    WorkloadFileError,
    hermes_mix,
    load_workload,
)

# shared/ sits beside the checkout, in development and in CI
DATA_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "workloads" / "hermes_apps.json"
HERMES_CLASSES = {
    "factool_code",
    "factool_kbqa",
    "factool_math",
    "react_fever",
    "react_alfw",
    "got_docmerge",
    "langchain_mapreduce",
    "code_feedback",
    "hugginggpt",
}


@pytest.fixture(scope="module")
def mix() -> dict[str, PDGraph]:
    return hermes_mix()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The packaged workload file as parsed JSON, to be copied and broken by each test."""
    return json.loads(resources.files("hermesflow.data").joinpath("hermes_apps.json").read_text())


def _write(tmp_path: Path, content: object, name: str = "apps.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# --------------------------------------------------------------------------- the Hermes mix


def test_all_nine_classes_load_from_the_package(mix: dict[str, PDGraph]) -> None:
    assert set(mix) == HERMES_CLASSES
    for name, graph in mix.items():
        assert graph.name == name
        assert graph.reachable, name
        assert any(stage.kind is StageKind.LLM for stage in graph.stages.values()), name


def test_docker_stages_become_code_stages(mix: dict[str, PDGraph]) -> None:
    assert mix["factool_code"].stages["code_execution"].kind is StageKind.CODE
    assert mix["code_feedback"].stages["code_execution"].kind is StageKind.CODE


def test_loop_counts_are_kept_only_where_a_stage_repeats(mix: dict[str, PDGraph]) -> None:
    assert mix["react_alfw"].stages["thought"].visits is not None
    assert mix["got_docmerge"].stages["score1"].visits.samples == (2.0,)
    assert mix["factool_code"].stages["generate_queries"].visits is None


@pytest.mark.skipif(not DATA_FILE.exists(), reason=f"{DATA_FILE} not present on this machine")
def test_load_workload_of_the_shared_data_file_equals_the_packaged_mix(
    tmp_path: Path, mix: dict[str, PDGraph]
) -> None:
    copied = tmp_path / "hermes_apps.json"
    shutil.copyfile(DATA_FILE, copied)
    loaded = load_workload(copied)
    assert list(loaded) == list(mix)
    for name, graph in loaded.items():
        assert graph.model_dump(mode="json") == mix[name].model_dump(mode="json"), name


def test_load_workload_accepts_a_str_path(tmp_path: Path, document: dict[str, Any]) -> None:
    path = _write(tmp_path, document)
    assert set(load_workload(str(path))) == HERMES_CLASSES


def test_a_declared_backend_is_kept(tmp_path: Path, document: dict[str, Any]) -> None:
    changed = copy.deepcopy(document)
    changed["apps"]["factool_math"]["stages"]["extract_claims"]["backend"] = "llm-small"
    graph = load_workload(_write(tmp_path, changed))["factool_math"]
    assert graph.backend_of("extract_claims") == "llm-small"
    assert graph.backend_of("generate_queries") == "llm"


def test_a_declared_attention_share_is_kept_and_checked(tmp_path: Path, document: dict[str, Any]) -> None:
    changed = copy.deepcopy(document)
    stage = changed["apps"]["factool_math"]["stages"]["extract_claims"]
    stage["attention"] = {"minference": 1.0}
    graph = load_workload(_write(tmp_path, changed))["factool_math"]
    assert graph.stages["extract_claims"].attention == {AttentionMethod.MINFERENCE: 1.0}
    stage["attention"] = {"minference": 0.5}
    with pytest.raises(WorkloadFileError, match="class 'factool_math'.*'attention'.*sum to 0.5"):
        load_workload(_write(tmp_path, changed))


# --------------------------------------------------------------------------- malformed files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(WorkloadFileError, match="no such workload file") as err:
        load_workload(path)
    assert str(path) in str(err.value)


def test_not_json(tmp_path: Path) -> None:
    path = _write(tmp_path, "{ this is not json")
    with pytest.raises(WorkloadFileError, match="not valid JSON") as err:
        load_workload(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [{"schema": "something.else.v9", "apps": {}}, {"apps": {}}, ["a", "list"]],
    ids=["other-schema", "no-schema", "not-an-object"],
)
def test_wrong_schema(tmp_path: Path, content: object) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(WorkloadFileError, match="field 'schema'") as err:
        load_workload(path)
    assert str(path) in str(err.value)
    assert SCHEMA in str(err.value)


@pytest.mark.parametrize("apps", [["factool_code"], {}, "apps", None], ids=repr)
def test_apps_not_a_mapping(tmp_path: Path, apps: object) -> None:
    path = _write(tmp_path, {"schema": SCHEMA, "apps": apps})
    with pytest.raises(WorkloadFileError, match="field 'apps'") as err:
        load_workload(path)
    assert str(path) in str(err.value)


def test_a_class_that_is_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, {"schema": SCHEMA, "apps": {"broken": [1, 2]}})
    with pytest.raises(WorkloadFileError, match="class 'broken' must be an object"):
        load_workload(path)


def test_bad_probability_names_file_class_stage_and_field(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    broken = copy.deepcopy(document)
    broken["apps"]["react_fever"]["stages"]["thought"]["next"] = {"search": 1.4, END: -0.4}
    path = _write(tmp_path, broken)
    with pytest.raises(WorkloadFileError) as err:
        load_workload(path)
    message = str(err.value)
    for part in (str(path), "class 'react_fever'", "stage 'thought'", "field 'next'", "[0, 1]"):
        assert part in message, f"{part!r} missing from: {message}"


def test_negative_samples_name_file_class_and_field_path(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    broken = copy.deepcopy(document)
    exec_s = broken["apps"]["hugginggpt"]["stages"]["dnn_execution"]["exec_s"]
    exec_s.pop("profile_samples", None)
    exec_s["samples"] = [1.0, -2.0, 3.0]
    path = _write(tmp_path, broken)
    with pytest.raises(WorkloadFileError) as err:
        load_workload(path)
    message = str(err.value)
    for part in (str(path), "class 'hugginggpt'", "stages.dnn_execution.exec_s.samples", "-2.0"):
        assert part in message, f"{part!r} missing from: {message}"


def test_an_unknown_stage_kind_names_the_stage(tmp_path: Path, document: dict[str, Any]) -> None:
    broken = copy.deepcopy(document)
    broken["apps"]["factool_math"]["stages"]["extract_claims"]["kind"] = "quantum"
    with pytest.raises(WorkloadFileError) as err:
        load_workload(_write(tmp_path, broken))
    assert "class 'factool_math'" in str(err.value)
    assert "stages.extract_claims.kind" in str(err.value)
