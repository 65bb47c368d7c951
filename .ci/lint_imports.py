"""Run `lint-imports` (pyproject's [tool.importlinter] contracts) on the package as installed.

The contracts name modules as the distribution installs them (`hermesflow.schedulers`), but the
sources keep pyproject's layout (`schedulers/`), which the editable install maps into the
package only at import time. Import-linter builds its graph by walking the package's folder, so
on the checkout it would see no `hermesflow.schedulers`, `operators` or `plugins` at all, and
every contract about them would pass unchecked. This lays the sources out as a wheel installs
them, as links in a temporary folder made from [tool.setuptools.package-dir], and runs
lint-imports there; its arguments are passed on (`--verbose`, `--contract ID`, ...).
"""

from __future__ import annotations

import os
import sys
import tempfile
import tomllib
from pathlib import Path

from importlinter.cli import lint_imports_command

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def lay_out(package_dir: dict[str, str], target: Path) -> None:
    """Link every module of each mapped folder where the installed package has it."""
    for package, folder in package_dir.items():
        source = ROOT / folder
        destination = target.joinpath(*package.split("."))
        for module in source.rglob("*.py"):
            link = destination / module.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(module)


def main(arguments: list[str]) -> None:
    package_dir = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="hermesflow-imports-") as tree:
        lay_out(package_dir, Path(tree))
        os.chdir(tree)  # lint-imports puts its working folder first on sys.path
        lint_imports_command.main([str(PYPROJECT), "--no-cache", *arguments])


if __name__ == "__main__":
    main(sys.argv[1:])
