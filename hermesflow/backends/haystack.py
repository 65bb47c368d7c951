"""Long real text, generated on the machine: the prompts of the long-context checks.

The checks need many thousand tokens of natural English without downloading anything. The
documentation of Python's standard library is on every machine that runs Hermesflow, so the text
here is the docstrings of standard-library modules, in a fixed order. The exact text depends on
the Python version, which is pinned.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import subprocess
import sys
import warnings
from typing import Any

STDLIB_MODULES = (
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools",
    "heapq", "http.client", "http.server", "inspect", "ipaddress", "itertools", "json",
    "logging", "mailbox", "multiprocessing", "os", "pathlib", "pickle", "pydoc", "random", "re",
    "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "threading",
    "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)  # fmt: skip


@functools.cache
def stdlib_text() -> str:
    """The docstrings of `STDLIB_MODULES`, their classes and functions, joined by blank lines,
    as a fresh interpreter sees them: packages imported later (Ray among them) add and patch
    standard-library attributes, which would change the text with what the process imported."""
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import {__name__} as h, sys; sys.stdout.write(h.read_docstrings())",
        ],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    return fresh.stdout.decode("utf-8")


def read_docstrings() -> str:
    """`stdlib_text` as this process sees it."""
    parts: list[str] = []
    with warnings.catch_warnings():  # reading `typing.io` and `typing.re` warns they are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in STDLIB_MODULES:
            module = importlib.import_module(name)
            for obj in [module, *(value for _, value in sorted(vars(module).items()))]:
                if _documented_here(obj, module):
                    doc = inspect.getdoc(obj)
                    if doc and len(doc) > 200:
                        parts.append(doc)
    return "\n\n".join(dict.fromkeys(parts))


def _documented_here(obj: Any, module: Any) -> bool:
    return obj is module or (
        (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    )


def haystack_ids(tokenizer: Any, tokens: int) -> list[int]:
    """The first `tokens` token ids of `stdlib_text()` (refused if the text is shorter)."""
    ids = tokenizer(stdlib_text(), add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        raise ValueError(
            f"the standard library's docstrings give {len(ids)} tokens, fewer than {tokens}; "
            "ask for a shorter text"
        )
    return ids[:tokens]
