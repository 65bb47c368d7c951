"""The prepared GPU check and the vLLM priority benchmark, on a machine without a GPU: what can
be checked here is that they refuse cleanly, find the gpu tests, read pytest's report, and rank
the benchmark's classes as the Gittins policy does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
import vllm_priority  # noqa: E402


def test_gpu_check_refuses_a_machine_without_an_nvidia_gpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # no nvidia-smi
    )
    assert done.returncode == 2, done.stderr
    assert "no NVIDIA GPU here" in done.stderr and "Traceback" not in done.stderr


def test_gpu_check_collects_exactly_the_modules_with_gpu_or_kernel_tests() -> None:
    files = gpu_check.gpu_test_files()
    assert "tests/backends/test_vllm.py" in files
    assert "tests/kernels/test_vertical_slash_kernel.py" in files
    for name in files:
        text = (ROOT / name).read_text()
        assert "pytest.mark.gpu" in text or "pytest.mark.kernels" in text
    assert "tests/backends/test_transformers_llm.py" not in files


def test_junit_outcomes_are_read_per_test(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert False\n"
        "@pytest.mark.skip(reason='not here')\n"
        "def test_skipped(): pass\n"
    )
    report = tmp_path / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         str(tmp_path / "test_sample.py")],
        cwd=tmp_path, capture_output=True, timeout=120,
    )
    outcomes = gpu_check._junit_outcomes(report)
    assert sorted(outcomes.values()) == ["failed", "passed", "skipped"]
    assert outcomes["test_sample::test_bad"] == "failed"


def test_the_benchmark_ranks_classes_by_gittins_not_by_mean() -> None:
    requests = vllm_priority.draw_requests(300, seed=1)
    keys = vllm_priority.policy_keys(requests)
    by_class = {policy: {r.app_class: k[i] for i, r in enumerate(requests)} for policy, k in keys.items()}
    gittins, mean = by_class["gittins"], by_class["mean"]
    assert gittins["short"] < gittins["chat"] < gittins["report"]
    assert mean["short"] < mean["report"] < mean["chat"]
    assert gittins["chat"] == pytest.approx((0.9 * 16 + 0.1 * 16) / 0.9)
    assert set(by_class["fcfs"].values()) == {None}
    assert all(keys["srpt"][i] == r.length for i, r in enumerate(requests))
    shares = {name: sum(r.app_class == name for r in requests) for name in vllm_priority.CLASSES}
    assert set(shares.values()) == {100}


def test_the_benchmark_says_why_it_cannot_run_here() -> None:
    done = subprocess.run(
        [sys.executable, "bench/vllm_priority.py", "--quick", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"bench": "vllm_priority", "results": [], "skipped": "needs a CUDA GPU"}


def test_the_runtime_benchmark_refuses_gpu_mode_without_a_gpu() -> None:
    done = subprocess.run(
        [sys.executable, "bench/runtime.py", "--quick", "--gpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "--gpu needs a CUDA GPU" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_gpu_mode_serves_the_same_model_in_vllm_on_one_gpu() -> None:
    from hermesflow.apps.suite import LLMEngine
    from hermesflow.demo import CPU_SETUP, EngineSetup
    from hermesflow.schedulers.runtime_config import VLLM_MODEL_COST

    gpu = EngineSetup.of(LLMEngine.GPU, eager=True)
    assert gpu.llm.type == "vllm" and gpu.llm.num_gpus == 1
    assert gpu.llm.options["engine_options"] == {"enforce_eager": True}
    assert gpu.llm.options["max_batch"] == CPU_SETUP.llm.options["max_batch"]
    assert gpu.prior is VLLM_MODEL_COST and not gpu.prior.llm["llm"].prefill_stalls
    assert [b.name for b in gpu.backends] == [b.name for b in CPU_SETUP.backends]
    assert [b for b in gpu.backends if b.name != "llm"] == [b for b in CPU_SETUP.backends if b.name != "llm"]
