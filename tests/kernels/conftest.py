"""The kernels' tests run the Triton kernels under Triton's interpreter when there is no GPU.

`TRITON_INTERPRET=1` is read twice: when `@triton.jit` runs (so it is set while the kernel
modules are imported, here) and when a kernel launches (so each test here runs with it). It is
put back in between: processes that other tests start later (Ray workers, servers) do not
inherit it."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator

import pytest
import torch

KERNEL_MODULES = (
    "hermesflow.kernels.block_sparse_attention",
    "hermesflow.kernels.vertical_slash_attention",
)
INTERPRET = not torch.cuda.is_available()


def _import_kernels() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for module in KERNEL_MODULES:
            importlib.import_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


if INTERPRET:
    _import_kernels()


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
