"""The kernels' tests run the Triton kernels under Triton's interpreter when there is no GPU.

`TRITON_INTERPRET=1` is read twice: when `@triton.jit` runs (the root conftest imports the kernel
modules with it set, before anything else can import them) and when a kernel launches (so each
test here runs with it). It is put back in between: processes that other tests start later (Ray
workers, servers) do not inherit it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

INTERPRET = not torch.cuda.is_available()


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
