"""The repository stands alone: a plain clone has everything its tests, scripts and docs refer to.

No tracked file points at a folder beside the clone (the project's design notes, math and fixtures
live in docs/ and tests/fixtures/), and the fixture files the tests load are inside the repository
and tracked by git, so `make test` passes in a fresh clone with nothing next to it (.ci/run runs it so).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import linear_fixtures
import local_fixtures
import pytest
from conftest import RALA_FIXTURE

REPO = Path(__file__).resolve().parents[1]

# Names of things that exist only outside the repository. Spelled in pieces so that this file does
# not match itself.
SHARED = "sha" + "red"
OUTSIDE = {
    "a folder beside the clone": re.compile(re.escape("../" + SHARED) + r"\b|/work/" + SHARED + r"\b"),
    "the environment variable that pointed at it": re.compile("ATTNBENCH_" + SHARED.upper()),
    "its spec or fixtures folder": re.compile(SHARED + r"/(spec|fixtures)\b"),
    "its design notes": re.compile(r"\b(DESIGN|STYLE)\.md\b"),
    "its math notes": re.compile(r"\bspec/rala\.md\b"),
}


def tracked_files() -> list[str]:
    try:
        proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout (git ls-files failed: {exc})")
    return [name for name in proc.stdout.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository():
    found = []
    for name in tracked_files():
        path = REPO / name
        if not path.is_file():  # deleted in the working tree
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary (fixtures): nothing a reader follows
            continue
        for line_no, line in enumerate(text.splitlines(), 1):
            what = [what for what, pattern in OUTSIDE.items() if pattern.search(line)]
            if what:
                found.append(f"{name}:{line_no}: {', '.join(what)}: {line.strip()[:100]}")
    assert not found, "files that refer to something outside the repository:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
    """The check above is only as good as its patterns: each must match the mention it exists for."""
    mentions = {
        "a folder beside the clone": "fixtures are read from ../" + SHARED + " by default",
        "the environment variable that pointed at it": "set ATTNBENCH_" + SHARED.upper() + "=/x",
        "its spec or fixtures folder": "see " + SHARED + "/spec/rala" + ".md section 1",
        "its design notes": "the contract (DESIGN" + ".md) says",
        "its math notes": "as in spec/rala" + ".md section 4",
    }
    assert set(mentions) == set(OUTSIDE)
    for what, text in mentions.items():
        assert OUTSIDE[what].search(text), what
    for fine in ("docs/design.md", "docs/rala.md", "a " + SHARED + " shell", "shared memory", "shared by the heads"):
        assert not any(p.search(fine) for p in OUTSIDE.values()), fine


def test_fixtures_the_tests_read_are_tracked_inside_the_repository():
    tracked = set(tracked_files())
    rala = RALA_FIXTURE.resolve()
    assert rala.is_relative_to(REPO / "tests" / "fixtures"), rala
    assert rala.relative_to(REPO).as_posix() in tracked
    for module in (linear_fixtures, local_fixtures):
        folder = Path(module.FIXTURE_DIR).resolve()
        assert folder.is_relative_to(REPO / "tests" / "fixtures"), folder
        files = sorted(p.relative_to(REPO).as_posix() for p in folder.glob("*.pt"))
        assert files and set(files) <= tracked, folder


def test_each_fixture_folder_says_how_to_rebuild_it():
    readme = (REPO / "tests" / "fixtures" / "rala" / "README.md").read_text(encoding="utf-8")
    assert "scripts/make_rala_fixtures.py" in readme
    assert (REPO / "scripts" / "make_rala_fixtures.py").is_file()
    assert (REPO / "scripts" / "make_linear_fixtures.py").is_file()
    assert (REPO / "scripts" / "make_local_fixtures.py").is_file()
