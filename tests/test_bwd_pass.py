"""Pass `bwd`: the backward alone, through a graph retained from one forward run outside the timed closure.

Truths: FlopCounterMode on the closure (only backward work in it), the gradients of a fwd_bwd closure on the
same inputs, the closure's own first call (repeats), the profiler's allocation events (no growth), and the
suite's rows (verified gradients, analytic FLOPs, skips).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnbench import registry
from attnbench.errors import SuiteError
from attnbench.execute import CaseExecutor
from attnbench.layers import TokenMixer, rope_operator
from attnbench.measure.flops import count_flops
from attnbench.models.counting import model_flops
from attnbench.models.ravlt import create_ravlt
from attnbench.plan import plan
from attnbench.registry import Mechanism, Shape
from attnbench.suite import load_suite
from attnbench.workloads import model as model_workloads
from attnbench.workloads.build import mixer_workload, op_workload
from attnbench.workloads.inputs import X_SEED, seeded_randn
from attnbench.workloads.model import LABELS_SEED, build_model_workload

SHAPE = dict(batch=1, heads=2, height=4, width=4, dtype="fp32", device="cpu")  # 16 tokens, head dim 8, dim 16


def workload(name: str, level: str, pass_: str):
    mech = registry.get(name)
    if level == "op":
        return op_workload(mech, head_dim=8, pass_=pass_, **SHAPE)
    return mixer_workload(mech, dim=16, pass_=pass_, **SHAPE)


CASES = [
    ("softmax_sdpa", "op"),
    ("rala_eager", "op"),
    ("linear_elu", "op"),
    ("rala_eager", "mixer"),
    ("softmax_eager", "mixer"),
]


@pytest.mark.parametrize("name, level", CASES)
def test_bwd_gradients_equal_fwd_bwd_and_repeat_exactly(name, level):
    """The bwd closure returns fwd_bwd's gradients (same inputs, same g), bit for bit, on every call."""
    expected = workload(name, level, "fwd_bwd").fn()
    work = workload(name, level, "bwd")
    calls = [work.fn() for _ in range(3)]
    n_inputs = 3 if level == "op" else 1 + len(list(work.module.parameters()))  # q, k, v | x and the parameters
    assert len(expected) == n_inputs
    for grads in calls:
        assert len(grads) == len(expected)
        assert all(torch.equal(g, e) for g, e in zip(grads, expected))
    if work.module is not None:
        assert work.module.training  # as fwd_bwd: train mode
        assert all(p.grad is None for p in work.module.parameters())  # grad() returns, nothing accumulates


def _allocation_events(fn, calls: int) -> list[int]:
    """Bytes allocated (+) and freed (-) by the CPU allocator during `calls` calls of fn, outputs dropped."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(calls):
            out = fn()
            del out
    path = tempfile.mktemp(suffix=".json")
    prof.export_chrome_trace(path)
    try:
        events = [e for e in json.loads(Path(path).read_text())["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.unlink(path)
    events.sort(key=lambda e: (float(e["ts"]), int(e["args"].get("Ev Idx", 0))))
    return [int(e["args"]["Bytes"]) for e in events]


def test_repeated_bwd_holds_no_memory():
    """Every call allocates and frees the same bytes in the same order (so the same peak), and nothing stays
    allocated after the calls."""
    fn = workload("softmax_eager", "op", "bwd").fn
    fn()
    calls = 4
    events = _allocation_events(fn, calls)
    per_call = len(events) // calls
    assert per_call > 0 and events == events[:per_call] * calls
    assert sum(events) == 0


@pytest.mark.parametrize(
    "name, level",
    [("rala_eager", "op"), ("rala_eager", "mixer"), ("softmax_sdpa", "op")],
)
def test_bwd_closure_counts_the_backward_only(name, level):
    """FlopCounterMode on the closure equals the analytic bwd count (CPU SDPA's flash kernel recomputes the
    scores, which is the 2.5x softmax convention; tests/test_counting.py has the fwd and fwd_bwd twins)."""
    mech = registry.get(name)
    s = Shape(1, 2, 4, 4, 8, 16)
    counted = count_flops(workload(name, level, "bwd").fn)
    assert counted == pytest.approx(mech.flops(s, level=level, pass_="bwd"), rel=1e-9)
    assert counted == pytest.approx(
        mech.flops(s, level=level, pass_="fwd_bwd") - mech.flops(s, level=level, pass_="fwd"), rel=1e-9
    )


def test_bwd_flops_are_fwd_bwd_minus_fwd_for_every_mechanism():
    s = Shape(2, 2, 6, 10, 16, 32)
    checked = 0
    for name in registry.names():
        mech = registry.get(name)
        for level in mech.levels:
            try:
                fwd = mech.flops(s, level=level, pass_="fwd")
            except NotImplementedError:
                continue
            fwd_bwd = mech.flops(s, level=level, pass_="fwd_bwd")
            bwd = mech.flops(s, level=level, pass_="bwd")
            assert bwd == pytest.approx(fwd_bwd - fwd, rel=1e-12), (name, level)
            assert fwd < bwd < fwd_bwd, (name, level)
            checked += 1
    assert checked > 20
    softmax = registry.get("softmax_eager")
    assert softmax.flops(s, level="op", pass_="bwd") == 2.5 * softmax.flops(s, level="op", pass_="fwd")
    rala = registry.get("rala_eager")
    assert rala.flops(s, level="op", pass_="bwd") == 2 * rala.flops(s, level="op", pass_="fwd")
    kw = dict(batch=2, mixer="rala_eager")
    assert model_flops("ravlt_t", 64, 96, pass_="bwd", **kw) == pytest.approx(
        model_flops("ravlt_t", 64, 96, pass_="fwd_bwd", **kw) - model_flops("ravlt_t", 64, 96, pass_="fwd", **kw)
    )
    with pytest.raises(ValueError, match="unknown pass 'back'"):
        rala.flops(s, level="op", pass_="back")


@pytest.mark.slow
def test_model_level_bwd(monkeypatch):
    """ravlt_t at 32 px: the gradients of the training loss w.r.t. every parameter, equal to those of the same
    loss computed afresh on the workload's model, inputs and labels (the same drop-path draws: the generator
    state its forward started from). Repeats: the op and mixer tests above."""
    states = []

    def create_and_note_generator(*args, **kwargs):
        model = create_ravlt(*args, **kwargs)
        states.append(torch.get_rng_state())  # after the seeded init: where the workload's forward starts
        return model

    monkeypatch.setattr(model_workloads, "create_ravlt", create_and_note_generator)
    work = build_model_workload(
        "ravlt_t", "rala_eager", batch=2, height=32, width=32, dtype="fp32", device="cpu", pass_="bwd"
    )  # batch 2: BatchNorm in train mode needs 2 values on the 1 x 1 maps
    rows = {r.metric: r for r in work.static}
    assert rows["flops"].value == model_flops("ravlt_t", 32, 32, batch=2, mixer="rala_eager", pass_="bwd")
    assert rows["flops"].value == pytest.approx(rows["flops_counted"].value, rel=0.01)
    assert "bwd = 2x fwd" in rows["flops"].note and "the backward of one training step" in rows["flops_counted"].note
    model = work.module
    assert model.training
    first = work.fn()

    x = seeded_randn((2, 3, 32, 32), dtype=torch.float32, device="cpu", seed=X_SEED)
    labels = torch.randint(0, model.num_classes, (2,), generator=torch.Generator().manual_seed(LABELS_SEED))
    torch.set_rng_state(states[0])
    params = list(model.parameters())
    expected = torch.autograd.grad(F.cross_entropy(model(x), labels), params)
    assert len(first) == len(params) == len(expected)
    assert all(torch.allclose(a, e, rtol=1e-5, atol=1e-7) for a, e in zip(first, expected))
    assert all(p.grad is None for p in params)


# --- through a suite: plan, verify, rows ------------------------------------------------------------------
class _NoBackward(Mechanism):
    def op(self, q, k, v, *, grid):
        return v


class _NotRepeatable(Mechanism):
    repeatable_backward = False

    def op(self, q, k, v, *, grid):
        return v

    def mixer(self, dim, num_heads):
        return TokenMixer(dim, num_heads, rope_operator(lambda q, k, v: v))


@pytest.fixture
def probes():
    registry.register_mechanism("test_bwd_no_backward", family="test", has_backward=False)(_NoBackward)
    registry.register_mechanism("test_bwd_not_repeatable", family="test")(_NotRepeatable)
    yield
    registry.unregister("test_bwd_no_backward")
    registry.unregister("test_bwd_not_repeatable")


def _suite(mechanisms: list[str], passes: list[str]):
    return load_suite(
        {
            "name": "bwd",
            "mechanisms": mechanisms,
            "level": "op",
            "pass": passes,
            "resolution": [4],
            "dim": 16,
            "heads": 2,
            "device": "cpu",
            "threads": 1,
            "warmup": 1,
            "repeats": {"min": 3, "max": 3, "min_time_s": 0},
        }
    )


def test_suite_skips_bwd_without_a_repeatable_backward(probes):
    suite = _suite(["rala_eager", "test_bwd_no_backward", "test_bwd_not_repeatable"], ["fwd", "fwd_bwd", "bwd"])
    skips = {(c.mechanism, c.pass_): c.skip for c in plan(suite)}
    assert skips[("test_bwd_no_backward", "bwd")] == skips[("test_bwd_no_backward", "fwd_bwd")]
    assert skips[("test_bwd_no_backward", "bwd")] == "unsupported: no backward pass"
    assert skips[("test_bwd_not_repeatable", "bwd")] == (
        "unsupported: its backward cannot run twice through one retained graph (pass bwd)"
    )
    assert skips[("test_bwd_not_repeatable", "fwd_bwd")] is None  # one backward per graph there
    assert not any(skip for (name, _), skip in skips.items() if name == "rala_eager")
    executor = CaseExecutor(suite, "test-run")
    for case in plan(suite):
        if case.pass_ == "bwd" and case.mechanism.startswith("test_"):
            rows, _ = executor.run(case)
            assert [(r["status"], r["message"]) for r in rows] == [("skipped", case.skip)]


def test_model_bwd_skips_a_late_mixer_without_a_repeatable_backward(probes):
    """At model level the mechanism runs stages 1-2 and `mixer_late` stages 3-4: either one that cannot run
    pass bwd skips the case, naming which."""
    suite = load_suite(
        {
            "name": "bwd-model",
            "mechanisms": ["rala_eager", "test_bwd_not_repeatable"],
            "level": "model",
            "models": ["ravlt_t"],
            "pass": ["fwd", "bwd"],
            "resolution": [32],
            "device": "cpu",
            "options": {"ravlt_t": {"mixer_late": "test_bwd_not_repeatable"}},
        }
    )
    skips = {(c.mechanism, c.pass_): c.skip for c in plan(suite)}
    reason = "unsupported: its backward cannot run twice through one retained graph (pass bwd)"
    assert skips[("rala_eager", "bwd")] == f"{reason} (mixer_late test_bwd_not_repeatable)"
    assert skips[("test_bwd_not_repeatable", "bwd")] == reason
    assert skips[("rala_eager", "fwd")] is None and skips[("test_bwd_not_repeatable", "fwd")] is None


def test_suite_bwd_rows():
    """Measured in this process: verified gradients, the analytic bwd FLOPs, latency and memory rows."""
    suite = _suite(["softmax_sdpa", "rala_eager", "linear_elu"], ["bwd"])
    executor = CaseExecutor(suite, "test-run")
    s = Shape(1, 2, 4, 4, 8, 16)
    cases = plan(suite)
    assert [(c.mechanism, c.pass_, c.skip) for c in cases] == [
        ("softmax_sdpa", "bwd", None),
        ("rala_eager", "bwd", None),
        ("linear_elu", "bwd", None),
    ]
    assert cases[0].label().startswith("softmax_sdpa op bwd fp32 ")  # tables and reports name the pass
    for case in cases:
        rows, _ = executor.measure(case)
        by = {(r["metric"], r["stat"]): r for r in rows}
        assert all(r["status"] == "ok" for r in rows), rows[0]["message"]
        assert all(r["pass"] == "bwd" for r in rows)
        grad = next(r for r in rows if r["metric"] == "grad_rel_err")  # verified, within its tolerance (ok)
        assert 0 <= grad["value"] < 1e-5
        flops = next(r for r in rows if r["metric"] == "flops")
        assert flops["value"] == registry.get(case.mechanism).flops(s, level="op", pass_="bwd")
        assert not any(r["metric"] == "bytes" for r in rows)  # one forward's minimum traffic: fwd cases only
        assert by[("latency", "median")]["value"] > 0
        assert next(r for r in rows if r["metric"] == "peak_memory")["value"] > 0


def test_pass_key_names_bwd(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text("name: t\nmechanisms: [rala_eager]\npass: [bwd, backward]\n")
    with pytest.raises(SuiteError, match="'backward' is not one of fwd, fwd_bwd, bwd"):
        load_suite(path)
