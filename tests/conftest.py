"""Test configuration.

Triton kernels run in the interpreter when CUDA is absent: TRITON_INTERPRET=1 must be set before
any kernel module is imported, so it is set here, at collection start, and only without CUDA.
Tests marked `gpu` skip with a reason where no CUDA device is present. The built-in mechanisms are loaded
once, here (`attnbench.loading`), as the CLI loads them for a run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attnbench.loading import load_mechanisms  # noqa: E402  (after TRITON_INTERPRET is set)

load_mechanisms()  # the test suite is an entry point of the program: it loads the mechanisms once, here

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ATTNBENCH_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"


def pytest_collection_modifyitems(config, items):
    # tests marked slow first (stable order otherwise): under `-n 2` the long ones then start at once on
    # both workers instead of one of them finishing alone at the end of the run
    items.sort(key=lambda item: "slow" not in item.keywords)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none present); runs in scripts/gpu_check.sh")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "rala_reference_outputs.pt").is_file():
        pytest.fail(f"shared fixtures not found at {FIXTURES}; set ATTNBENCH_SHARED to the shared/ folder")
    return FIXTURES


@pytest.fixture(scope="session")
def rala_fixtures(fixtures_dir):
    return torch.load(fixtures_dir / "rala_reference_outputs.pt", weights_only=True)
