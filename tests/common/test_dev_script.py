"""scripts/dev runs the pip installs only when .venv is not current: on a copy of the
workspace's pyproject files with a .venv whose python records every pip call instead of
running it, the first `up` installs, the second goes straight to `oddity up`, and a changed
pyproject.toml installs again; `check-venv` says each time what `up` will do."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import repo_root

INSTALLS = [
    "-m pip install --quiet --upgrade pip",
    "-m pip install --quiet torch==2.13.0",
    "-m pip install --quiet -e services/common -e services/detector -e services/embedder[export] "
    "-e services/trainer -e services/client[spark] --group dev",
]


@pytest.fixture
def workspace(tmp_path) -> Path:
    """scripts/dev and every pyproject.toml; .venv/bin/python logs pip calls to pip.log (and
    runs anything else with this interpreter, whose packages are installed); `oddity` echoes."""
    root = repo_root()
    for pyproject in [root / "pyproject.toml", *sorted(root.glob("services/*/pyproject.toml"))]:
        copy = tmp_path / pyproject.relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pyproject, copy)
    (tmp_path / "scripts").mkdir()
    shutil.copyfile(root / "scripts" / "dev", tmp_path / "scripts" / "dev")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    executables = {
        "python": f'if [ "$1 $2" = "-m pip" ]; then echo "$*" >> "{tmp_path}/pip.log"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n',
        "oddity": 'echo "oddity $*"\n',
    }
    for name, body in executables.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
    return tmp_path


def dev(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(workspace / "scripts" / "dev"), *args], capture_output=True, text=True, timeout=60
    )


def pip_calls(workspace: Path) -> list[str]:
    log = workspace / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_up_installs_only_when_the_venv_is_not_current(workspace):
    checked = dev(workspace, "check-venv")
    assert (checked.returncode, checked.stdout) == (1, "would install: no setup recorded in .venv/.oddity-setup-hash\n")

    first = dev(workspace, "up", "--no-embedder")
    assert (first.returncode, first.stdout) == (0, "oddity up --no-embedder\n")
    assert first.stderr == "scripts/dev: installing into .venv (no setup recorded in .venv/.oddity-setup-hash)\n"
    assert pip_calls(workspace) == INSTALLS
    assert dev(workspace, "check-venv").stdout == "current\n"

    second = dev(workspace, "up", "--no-embedder")
    assert (second.returncode, second.stdout, second.stderr) == (0, "oddity up --no-embedder\n", "")
    assert pip_calls(workspace) == INSTALLS  # no install this time

    trainer = workspace / "services" / "trainer" / "pyproject.toml"
    trainer.write_text(trainer.read_text() + "# a new dependency\n")
    checked = dev(workspace, "check-venv")
    assert (checked.returncode, checked.stdout) == (
        1,
        "would install: a pyproject.toml or the install lines changed since the last setup\n",
    )
    dev(workspace, "up")
    assert pip_calls(workspace) == INSTALLS * 2
    assert dev(workspace, "check-venv").stdout == "current\n"


def test_a_venv_whose_python_does_not_run_is_not_current(workspace):
    dev(workspace, "up")
    (workspace / ".venv" / "bin" / "python").write_text("#!/usr/bin/env bash\nexit 1\n")

    checked = dev(workspace, "check-venv")
    assert (checked.returncode, checked.stdout) == (1, "would install: .venv's python does not run\n")
