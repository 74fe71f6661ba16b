"""pytest-benchmark cases generated from a suite: one per planned case, same workloads as the runner.

Default suite: suites/smoke.yaml (override with ATTNBENCH_BENCH_SUITE=path, extra `--set`s with
ATTNBENCH_BENCH_SET="key=value;key=value"). In CI these run with --benchmark-disable (each case
executed once, untimed, so they still fail if a case breaks). For regression gating:

    pytest tests/bench --benchmark-only --benchmark-save=base --benchmark-save-data
    pytest tests/bench --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%
    python -m attnbench gate .benchmarks/<machine>/0001_base.json .benchmarks/<machine>/0002_new.json
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attnbench import verify
from attnbench.measure.timing import synchronize
from attnbench.plan import plan
from attnbench.suite import load_suite
from attnbench.workloads.build import build_workload
from attnbench.workloads.inputs import CaseInputs

REPO = Path(__file__).resolve().parents[2]
SUITE_PATH = Path(os.environ.get("ATTNBENCH_BENCH_SUITE", REPO / "suites" / "smoke.yaml"))
OVERRIDES = [s for s in os.environ.get("ATTNBENCH_BENCH_SET", "").split(";") if s.strip()]

SUITE = load_suite(SUITE_PATH, OVERRIDES)
CASES = [c for c in plan(SUITE) if c.level in ("op", "mixer", "model")]


@pytest.mark.parametrize("case", CASES, ids=[c.label().replace(" ", "-") for c in CASES])
def test_case(benchmark, case):
    if case.skip:
        pytest.skip(case.skip)
    work = build_workload(CaseInputs.of(case))
    benchmark.extra_info.update(
        case_id=case.case_id, mechanism=case.mechanism, level=case.level, tokens=case.tokens, batch=case.batch
    )
    for _ in range(SUITE.warmup):  # warm-up (and compilation) outside the timed rounds
        work.fn()
    synchronize(case.device)

    def call():
        out = work.fn()
        synchronize(case.device)  # GPU work is finished inside the timed round
        return out

    rounds = max(SUITE.repeats.min, 5)
    out = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    # the timed call computed this case: finite values of the case's shape (fwd_bwd: the gradients, the
    # first one w.r.t. the op's q or the mixer's x) ...
    first = out[0] if case.pass_ == "fwd_bwd" else out
    assert all(torch.isfinite(t).all() for t in (out if case.pass_ == "fwd_bwd" else [out]) if t is not None)
    assert tuple(first.shape) == expected_shape(case)
    # ... and the mechanism computes the right thing there: its output vs its registered reference in float64
    if case.level in ("op", "mixer"):
        verdict = _verify(case)
        assert verdict.ok, verdict.message()


def expected_shape(case) -> tuple[int, ...]:
    """op: (B, h, N, d); mixer: (B, C, H, W); model: the batch of logits (B, classes), by the mechanism interface
    (docs/design.md)."""
    if case.level == "op":
        return (case.batch, case.heads, case.height * case.width, case.head_dim)
    if case.level == "mixer":
        return (case.batch, case.dim, case.height, case.width)
    return (case.batch, 1000)


def _verify(case) -> verify.Verdict:
    return verify.verify_case(CaseInputs.of(case))
