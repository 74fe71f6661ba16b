"""compile_s and recompiles: the rows of compiled cases (attnbench.metrics.compile_cost), measured in-process.

One real inductor compile (rala_compiled at a tiny shape); the forced recompiles use dynamo's `eager` backend
(tracing only, no code generation), so they cost a fraction of a second each.
"""

from __future__ import annotations

import pytest
import torch

from attnbench.execute import CaseExecutor
from attnbench.measure.compiler import FirstCall
from attnbench.plan import plan
from attnbench.registry import Mechanism, register_mechanism, unregister
from attnbench.suite import load_suite

REPEATS = 3
TINY = {
    "name": "compile-cost",
    "level": "op",
    "resolution": [4],
    "dim": 16,
    "heads": 1,
    "warmup": 1,
    "rounds": 1,
    "retries": 0,
    "verify": False,
    "metrics": ["latency"],
    "repeats": {"min": REPEATS, "max": REPEATS, "min_time_s": 0},
    "device": "cpu",
}


def measure(mechanism: str) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """The rows (by metric; latency by its median) and samples of the one case of TINY with `mechanism`."""
    suite = load_suite({**TINY, "mechanisms": [mechanism]})
    (case,) = plan(suite)
    rows, samples = CaseExecutor(suite, "test").measure(case)
    assert all(r["status"] == "ok" for r in rows), [(r["metric"], r["message"]) for r in rows]
    by_metric = {r["metric"]: r for r in rows if r["stat"] in ("value", "median")}
    return by_metric, samples


@pytest.mark.slow  # one inductor compile of rala_compiled: ~10-20 s on 2 cores from a cold cache, ~2-8 s warm
def test_rala_compiled_writes_compile_rows_and_no_recompiles_when_steady():
    rows, samples = measure("rala_compiled")
    compile_s, recompiles, latency = rows["compile_s"], rows["recompiles"], rows["latency"]
    assert (compile_s["unit"], recompiles["unit"]) == ("s", "count")
    # the first call traces and generates (or loads) code: far slower than a steady call of the tiny operator
    assert compile_s["value"] > 10 * latency["value"] / 1e3
    assert compile_s["note"].startswith("rala_compiled; first call after torch._dynamo.reset(): 1 graph traced")
    assert "inductor FX graph cache: 1 " in compile_s["note"]  # a hit or a miss: inductor ran
    assert recompiles["value"] == 0 and "recompiled" not in latency["note"]
    assert samples["compile_s"] == [compile_s["value"]] and samples["recompiles"] == [0.0]


_double = torch.compile(lambda t: t * 2, backend="eager", dynamic=False)  # one graph per input size


class Recompiling(Mechanism):
    """A plugin whose compiled function sees a new shape on every call: every call compiles a graph."""

    compiled = True
    flop_counter_safe = False
    calls = 0

    def op(self, q, k, v, *, grid):
        self.calls += 1
        _double(torch.ones(self.calls + 1))  # sizes 2, 3, ...: dynamic=False specialises on each
        return v


@pytest.fixture
def recompiling():
    """The plugin registered for one test (and removed after it, so no other test sees it)."""
    register_mechanism("test_recompiling", family="test")(Recompiling)
    yield "test_recompiling"
    unregister("test_recompiling")


def test_a_recompile_in_the_timed_repeats_is_counted_noted_and_warned(recompiling):
    with pytest.warns(RuntimeWarning, match="test_recompiling op .*recompiled: 3 graphs compiled during the timed"):
        rows, samples = measure(recompiling)
    assert rows["recompiles"]["value"] == REPEATS  # one new input size per timed call (the warm-up's not counted)
    assert rows["latency"]["note"] == f"recompiled: {REPEATS} graphs compiled during the timed repeats"
    assert rows["compile_s"]["note"] == (
        "test_recompiling; first call after torch._dynamo.reset(): 1 graph traced; no inductor FX graph cache "
        "lookup (a backend without inductor code generation)"
    )
    assert samples["recompiles"] == [float(REPEATS)]


def test_uncompiled_cases_write_no_compile_rows():
    rows, samples = measure("rala_eager")
    assert "compile_s" not in rows and "recompiles" not in rows
    assert "compile_s" not in samples and "recompiles" not in samples


@pytest.mark.parametrize(
    "first, note",
    [
        (FirstCall(1.0, 1, 0, 1, False), "1 graph traced; inductor FX graph cache: 1 miss (code generated)"),
        (FirstCall(1.0, 2, 2, 0, False), "2 graphs traced; inductor FX graph cache: 2 hits (code loaded from disk)"),
        (FirstCall(1.0, 1, 0, 0, True), "1 graph traced; inductor caches disabled (code generated)"),
    ],
)
def test_first_call_note_says_whether_code_was_generated(first, note):
    assert first.note() == f"first call after torch._dynamo.reset(): {note}"
