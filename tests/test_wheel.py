"""The wheel (`pip wheel .`) carries every module of attnbench and the built-in mechanisms, and the shipped
suites as attnbench/suites; unpacked outside the checkout, `run SUITE_NAME --dry-run` and `list` work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "attnbench", "mechanisms", "suites")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the project's sources (the checkout gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (built,) = out.glob("attnbench-*.whl")
    return built


def _tree_files() -> set[str]:
    """What the wheel must hold, from the checkout: every module of the two packages, every shipped suite."""
    files = {
        p.relative_to(REPO).as_posix()
        for pkg in ("attnbench", "mechanisms")
        for p in (REPO / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    return files | {f"attnbench/suites/{p.name}" for p in (REPO / "suites").glob("*.yaml")}


def test_wheel_holds_every_module_the_mechanisms_and_the_suites(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _tree_files()
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (a package missing from [tool.setuptools] packages?): {missing[:10]}"
    assert {"mechanisms/__init__.py", "attnbench/suites/smoke.yaml", "attnbench/suites/resolution.yaml"} <= names
    assert any(n.startswith("mechanisms/rala/") for n in names)
    stray = sorted(n for n in names if not n.startswith(("attnbench/", "mechanisms/", "attnbench-")))
    assert not stray, f"files outside the packages: {stray}"  # no tests/, results/ or scripts/
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "attnbench = attnbench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_unpacked_wheel_runs_a_shipped_suite_by_name_and_lists_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "import attnbench, sys\n"
        "from attnbench.cli import main\n"
        "print('package:', attnbench.__file__)\n"
        "assert main(['run', 'smoke', '--dry-run']) == 0\n"
        "assert main(['list', '--family', 'rala']) == 0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"package: {site / 'attnbench' / '__init__.py'}" in proc.stdout  # not the checkout's copy
    assert "suite smoke on" in proc.stdout and "nothing run (--dry-run)" in proc.stdout
    assert "rala_eager" in proc.stdout
    assert list(work.iterdir()) == []
