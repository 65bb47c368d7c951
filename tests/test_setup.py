"""Set-up stays quiet: the package builds without setuptools warnings, and `make browser` says
what it installs and why in one line instead of printing apt's output."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_builds_without_warnings_and_ships_the_page_files(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    output = build.stdout + build.stderr
    assert "Warning" not in output, output
    [wheel] = tmp_path.glob("hermesflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("static/hermesflow.js", "static/hermesflow.css", "templates/page.html"):
        assert f"hermesflow/plugins/{shipped}" in names


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def test_make_browser_installs_chromium_quietly_and_says_so(tmp_path: Path) -> None:
    """An apt-get that prints 600 lines, as the real one does, and installs the browser: the
    target says in one line what it installs and why, then the version, and keeps apt's output
    in a log. (`CHROMIUM` names a browser command that is surely missing, so the install runs.)"""
    tools = tmp_path / "bin"
    tools.mkdir()
    browser = tools / "hermesflow-test-chromium"
    _executable(
        tools / "apt-get",
        "#!/bin/sh\nfor i in $(seq 600); do echo \"apt line $i\"; done\n"
        f"if [ \"$1\" = install ]; then printf '#!/bin/sh\\necho Chromium 156.0\\n' > {browser}; "
        f"chmod +x {browser}; fi\n",
    )
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "--no-print-directory", "-s", "browser", f"VENV={venv}", "SUDO=",
         f"CHROMIUM={browser.name}"],
        cwd=ROOT, env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert "Installing Debian's chromium for the browser tests" in lines[0]
    assert lines[1] == "chromium installed: Chromium 156.0"
    assert "apt line 600" in (venv / "apt-chromium.log").read_text()
