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

RALA_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "rala" / "rala_reference_outputs.pt"


def pytest_configure(config):
    # under `-n N`, hand tests out one at a time (xdist's default sends each worker a quarter of its share at
    # once, so one worker would get every slow test below and run them one after another)
    if hasattr(config.option, "maxschedchunk") and config.option.maxschedchunk is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config, items):
    # tests marked slow first (stable order otherwise): with tests handed out one at a time, the long ones
    # start at once on all workers and the short ones fill the gaps, instead of a long one finishing alone at
    # the end of the run
    items.sort(key=lambda item: "slow" not in item.keywords)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none present); runs in scripts/gpu_check.sh")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def rala_fixtures() -> dict:
    """The published RALA/RAVLT code's outputs (tests/fixtures/rala/README.md)."""
    if not RALA_FIXTURE.is_file():
        pytest.fail(f"{RALA_FIXTURE} is missing; restore it from git or rebuild it with scripts/make_rala_fixtures.py")
    return torch.load(RALA_FIXTURE, weights_only=True)
