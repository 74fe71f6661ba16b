"""Timing: statistics by hand, adaptive repeats, and the GPU timer's schedule against a simulated device.

`FakeGpu` is a device stream with a fake clock: the host clock advances by what the host does, and each piece
of enqueued work starts when the device is free and the host has enqueued it, so an event's time, a
synchronise's wait and a launch-bound call come out as on a GPU, without a GPU and without sleeping. Its log
spells the schedule: F flush, E event, K kernel, R graph replay, S synchronise. The agreement of the real
CUDA timer with triton.testing.do_bench is tests/test_timing_gpu.py."""

from __future__ import annotations

import math
import re
import statistics
import time

import pytest

from attnbench.measure import timing
from attnbench.measure.timing import (
    CaseTimeout,
    RepeatPolicy,
    TimerBackend,
    median_ci_halfwidth,
    summarize,
    time_fn,
    warm_up,
)


def test_summarize_by_hand():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats["median"] == 3.0 and stats["mean"] == 3.0 and stats["min"] == 1.0 and stats["n"] == 5
    # linear interpolation between closest ranks: p20 at position 0.8 -> 1.8, p80 at 3.2 -> 4.2
    assert stats["p20"] == pytest.approx(1.8) and stats["p80"] == pytest.approx(4.2)
    assert stats["std"] == pytest.approx(statistics.stdev([1, 2, 3, 4, 5]))


def test_repeats_policy_min_max_and_time():
    calls = []
    samples = time_fn(lambda: calls.append(1), warmup=2, policy=RepeatPolicy(min=4, max=7, min_time_s=0.0))
    assert len(samples) == 4 and len(calls) == 6  # warm-up calls are not timed
    samples = time_fn(lambda: time.sleep(0.002), warmup=0, policy=RepeatPolicy(min=1, max=1000, min_time_s=0.03))
    assert 8 <= len(samples) < 30 and sum(samples) >= 0.03


def test_median_ci_stopping_rule():
    assert math.isinf(median_ci_halfwidth([1.0] * 5))
    assert median_ci_halfwidth([1.0] * 50) == 0.0
    # a loose target is met at once (1000x the median: even a preempted repeat of a no-op stays inside it)
    samples = time_fn(lambda: None, warmup=2, policy=RepeatPolicy(min=6, max=500, min_time_s=0.0, target_ci=1e3))
    assert len(samples) == 6


def test_gpu_telemetry_parsing():
    from attnbench.measure.env import parse_telemetry

    got = parse_telemetry("1980, 2619, 312.45, 61")
    assert got == {
        "gpu_clock_mhz": (1980.0, "MHz"),
        "gpu_mem_clock_mhz": (2619.0, "MHz"),
        "gpu_power_w": (312.45, "W"),
        "gpu_temp_c": (61.0, "C"),
    }
    assert parse_telemetry("1980, [N/A], [Not Supported], 40") == {
        "gpu_clock_mhz": (1980.0, "MHz"),
        "gpu_temp_c": (40.0, "C"),
    }


# -- the GPU schedule, on a simulated device ---------------------------------------------------------------------
US = 1e-6


class FakeGpu(TimerBackend):
    """One in-order device stream and a fake host clock (seconds). Enqueuing costs the host `launch_s`; work
    starts at max(device free, host time of its enqueue); `synchronize` waits for the device and costs `sync_s`.
    `elapsed` refuses events that a synchronise has not reached, as CUDA does."""

    asynchronous = True

    def __init__(self, flush_s=100 * US, launch_s=1 * US, sync_s=5 * US):
        self.flush_s, self.launch_s, self.sync_s = flush_s, launch_s, sync_s
        self.host = self.free = self.synced = 0.0
        self.log: list[str] = []
        self.capturing: list[float] | None = None
        self.captured_calls = 0

    def now(self):
        return self.host

    def enqueue(self, what: str, device_s: float) -> float:
        self.host += self.launch_s
        start = max(self.free, self.host)
        self.free = start + device_s
        self.log.append(what)
        return start

    def kernel(self, host_s: float, device_s: float) -> None:
        """A call's work: `host_s` of host time, then one kernel of `device_s` (captured while capturing)."""
        self.host += host_s
        if self.capturing is not None:
            self.capturing.append(device_s)
        else:
            self.enqueue("K", device_s)

    def synchronize(self):
        self.host = max(self.host, self.free) + self.sync_s
        self.synced = self.free
        self.log.append("S")

    def event(self):
        return {}

    def record(self, event):
        event["t"] = self.enqueue("E", 0.0)

    def elapsed(self, begin, end):
        assert end["t"] <= self.synced, "event read before a synchronise reached it"
        return end["t"] - begin["t"]

    def flush(self):
        self.enqueue("F", self.flush_s)

    def capture(self, fn, calls):
        self.capturing = []
        for _ in range(calls):
            fn()
        kernels, self.capturing = self.capturing, None
        self.captured_calls = calls
        return lambda: self.enqueue("R", sum(kernels))

    def timed_log(self, warm_syncs: int) -> str:
        """The log after the warm-up's `warm_syncs` synchronises."""
        text = "".join(self.log)
        cut = [m.end() for m in re.finditer("S", text)][warm_syncs - 1] if warm_syncs else 0
        return text[cut:]


def fake_call(gpu: FakeGpu, host_s: float, device_s: float, counter: list | None = None):
    def fn():
        if counter is not None:
            counter.append(1)
        gpu.kernel(host_s, device_s)

    return fn


def test_gpu_repeats_are_batched_one_synchronise_per_batch_and_flushed_outside_their_events():
    gpu = FakeGpu()
    policy = RepeatPolicy(min=40, max=40, min_time_s=0.0)
    out = time_fn(fake_call(gpu, 2 * US, 10 * US), warmup=1, policy=policy, flush_l2=True, backend=gpu)
    timed = gpu.timed_log(warm_syncs=1)
    assert timed == "FEKE" * 40 + "S"  # every repeat: flush, begin event, call, end event; one synchronise
    assert out == pytest.approx([10 * US] * 40)  # the events hold the kernel alone, not the 100 us flush
    # the policy's unmet minimum bounds a batch: 5 repeats when 5 are needed, even where 50 ms would fit more
    gpu = FakeGpu()
    time_fn(fake_call(gpu, 2 * US, 10 * US), warmup=1, policy=RepeatPolicy(5, 100, 0.0), flush_l2=True, backend=gpu)
    assert gpu.timed_log(warm_syncs=1) == "FEKE" * 5 + "S"


def test_gpu_batches_follow_the_repeat_policy_and_their_measured_time():
    """2 ms repeats: a 50 ms batch is 25 of them; min_time_s 0.2 s takes 100 repeats, in 4 batches of 25 (the
    first sized from the warm-up's time per call, the next from the last batch's)."""
    gpu = FakeGpu(flush_s=0.0)
    out = time_fn(
        fake_call(gpu, 5 * US, 2e-3), warmup=1, policy=RepeatPolicy(min=5, max=1000, min_time_s=0.2), backend=gpu
    )
    batches = gpu.timed_log(warm_syncs=1).split("S")[:-1]
    assert [len(b) // 3 for b in batches] == [25, 25, 25, 25] and set(batches) == {"EKE" * 25}
    assert len(out) == 100 and statistics.median(out) == pytest.approx(2e-3)
    # after a synchronise the device is idle: a batch's first begin event waits for the host to issue its call
    # (6 us here); the others queue up behind each other, each event pair spanning its own kernel only
    firsts = out[::25]
    assert firsts == pytest.approx([2e-3 + 6 * US] * 4)
    assert [t for i, t in enumerate(out) if i % 25] == pytest.approx([2e-3] * 96)


def test_gpu_target_ci_is_checked_between_batches():
    gpu = FakeGpu()
    policy = RepeatPolicy(min=6, max=500, min_time_s=0.0, target_ci=10.0)  # met as soon as there are 6 samples
    out = time_fn(fake_call(gpu, 1 * US, 1e-3), warmup=1, policy=policy, flush_l2=True, backend=gpu)
    assert len(out) == 6 and gpu.timed_log(warm_syncs=1).count("S") == 1


def test_gpu_timeout_is_checked_between_batches():
    """10 ms calls, timeout 35 ms: the warm-up call and then a 50 ms batch of 5 run whole; the timeout is raised
    after the batch's synchronise, not inside it."""
    gpu = FakeGpu(flush_s=0.0)
    calls: list = []
    with pytest.raises(CaseTimeout, match="timeout_s=0.035"):
        time_fn(
            fake_call(gpu, 5 * US, 10e-3, calls),
            warmup=1,
            policy=RepeatPolicy(min=100, max=100, min_time_s=0.0),
            timeout_s=0.035,
            backend=gpu,
        )
    assert len(calls) == 1 + 5 and gpu.log[-1] == "S" and gpu.log.count("S") == 2


def test_warm_up_runs_until_both_its_calls_and_its_seconds_are_done():
    # a synchronous device (the CPU): one call at a time, stopping at the first call that completes 25 ms
    class FakeHost(TimerBackend):  # synchronous: synchronize is a no-op
        host = 0.0

        def now(self):
            return self.host

    host = FakeHost()
    calls: list = []

    def cpu_call():
        calls.append(1)
        host.host += 1e-3

    warm_up(cpu_call, host, calls=3, seconds=0.025, check_timeout=lambda: None)
    assert len(calls) == 25 and host.host == pytest.approx(0.025)
    calls.clear()
    warm_up(cpu_call, host, calls=40, seconds=0.025, check_timeout=lambda: None)
    assert len(calls) == 40  # the calls outlast the seconds
    calls.clear()
    warm_up(cpu_call, host, calls=0, seconds=0.0, check_timeout=lambda: None)
    assert calls == []
    # a GPU: batches of back-to-back calls, one synchronise each, growing to what the time per call says is left
    gpu = FakeGpu(flush_s=0.0)
    calls.clear()
    per_call = warm_up(fake_call(gpu, 2 * US, 1e-3, calls), gpu, calls=3, seconds=0.025, check_timeout=lambda: None)
    batches = "".join(gpu.log).split("S")[:-1]
    assert [len(b) for b in batches] == [1, 1, 2, 4, 8, 9]  # 25 calls: at most doubling, then the rest
    assert len(calls) == 25 and 0.025 <= gpu.host < 0.026 and per_call == pytest.approx(1e-3, rel=0.01)
    gpu = FakeGpu(flush_s=0.0)
    calls.clear()
    warm_up(fake_call(gpu, 2 * US, 1e-3, calls), gpu, calls=10, seconds=0.0, check_timeout=lambda: None)
    assert len(calls) == 10 and gpu.log.count("S") == 5  # 1, 1, 2, 4, then the 2 left
    # through time_fn: the warm-up's calls are not timed, and a GPU warms up with at least one call
    gpu = FakeGpu(flush_s=0.0)
    calls.clear()
    out = time_fn(fake_call(gpu, 2 * US, 1e-3, calls), warmup=0, policy=RepeatPolicy(3, 3, 0.0), backend=gpu)
    assert len(out) == 3 and len(calls) == 4


def test_cuda_graph_unrolls_k_calls_and_divides_each_replay_by_k():
    # 10 us calls: k = 1 ms / (the warm-up's wall time per call, ~10 us) calls per graph
    gpu = FakeGpu()
    policy = RepeatPolicy(min=5, max=5, min_time_s=0.0)
    out = time_fn(
        fake_call(gpu, 2 * US, 10 * US), warmup=20, policy=policy, flush_l2=True, cuda_graph=True, backend=gpu
    )
    k = gpu.captured_calls
    assert 80 <= k <= 100 and out.unroll == k
    assert out == pytest.approx([10 * US] * 5)  # each replay's k x 10 us, divided by k
    assert gpu.timed_log(warm_syncs=gpu.log.count("S") - 1) == "FERE" * 5 + "S"  # a flush before every replay
    # a 1 us call would need 1000: capped
    gpu = FakeGpu()
    time_fn(fake_call(gpu, 0.0, 1 * US), warmup=5, policy=policy, cuda_graph=True, backend=gpu)
    assert gpu.captured_calls == timing.GRAPH_MAX_UNROLL
    # a 5 ms call: one per graph
    assert timing.graph_unroll(5e-3) == 1 and timing.graph_unroll(0.25e-3) == 4


def test_host_overhead_is_issue_time_beyond_device_time():
    # launch-bound: the host needs 31 us to issue a call (30 us of its own, 1 us to launch) whose kernel runs
    # 10 us; the flush (100 us) keeps the device's queue ahead of the host, so the events hold the 10 us and
    # the overhead is 21 us
    gpu = FakeGpu()
    out = time_fn(
        fake_call(gpu, 30 * US, 10 * US), warmup=1, policy=RepeatPolicy(9, 9, 0.0), flush_l2=True, backend=gpu
    )
    assert statistics.median(out) == pytest.approx(10 * US) and out.host_overhead == pytest.approx(21 * US)
    # device-bound: the host issues in 5 us a call that runs 500 us: no overhead
    gpu = FakeGpu()
    out = time_fn(
        fake_call(gpu, 5 * US, 500 * US), warmup=1, policy=RepeatPolicy(9, 9, 0.0), flush_l2=True, backend=gpu
    )
    assert out.host_overhead == 0.0
    # a graph replay is issued at once: the overhead of a graph of launch-bound calls is gone
    gpu = FakeGpu()
    out = time_fn(
        fake_call(gpu, 30 * US, 10 * US), warmup=1, policy=RepeatPolicy(5, 5, 0.0), cuda_graph=True, backend=gpu
    )
    assert out.host_overhead == 0.0 and out[1:] == pytest.approx([10 * US] * 4)  # the first: after a synchronise
    assert out.scaled(1e3).host_overhead == out.host_overhead * 1e3 and out.scaled(1e3).unroll == out.unroll
    # the CPU path has none
    assert time_fn(lambda: None, warmup=0, policy=RepeatPolicy(2, 2, 0.0)).host_overhead is None


# -- the output, verified again after timing ---------------------------------------------------------------------
def test_a_case_whose_output_drifts_while_timed_becomes_an_error_row():
    """`drifts_in_place` adds 1 to v in place and returns it: verification passes (the candidate and its float64
    run each get fresh copies), but every timed call moves the output, so the check after timing fails."""
    from attnbench import registry
    from attnbench.execute import CaseExecutor
    from attnbench.plan import plan
    from attnbench.suite import load_suite

    @registry.register_mechanism("test_drifts_in_place", family="test")
    class DriftsInPlace(registry.Mechanism):
        def op(self, q, k, v, *, grid):
            return v.add_(1)

    @registry.register_mechanism("test_steady", family="test")
    class Steady(registry.Mechanism):
        def op(self, q, k, v, *, grid):
            return v * 2

    quick = {"warmup": 0, "warmup_s": 0, "repeats": {"min": 2, "max": 2, "min_time_s": 0}, "rounds": 1}
    try:
        suite = load_suite(
            {"name": "t", "mechanisms": ["test_drifts_in_place", "test_steady"], "resolution": 4, "device": "cpu"}
            | {"metrics": ["latency"], "isolation": "inprocess", **quick}
        )
        executor = CaseExecutor(suite, "r")
        got = {case.mechanism: executor.measure(case) for case in plan(suite)}
    finally:
        registry.unregister("test_drifts_in_place")
        registry.unregister("test_steady")
    rows, samples = got["test_drifts_in_place"]
    assert rows[0]["status"] == "error" and rows[0]["message"].startswith("verify after timing failed: output rel_err")
    assert [r["metric"] for r in rows] == ["latency", "rel_err"] and rows[1]["status"] == "ok" and samples == {}
    rows, samples = got["test_steady"]
    assert {r["status"] for r in rows} == {"ok"} and len(samples["latency"]) == 2


def test_latency_rows_on_a_gpu_carry_host_overhead_and_flush_op_and_mixer_levels(monkeypatch):
    """The latency metric on a (faked) cuda case: a host_overhead row in ms from the kept attempt's timings, and
    the flush asked for at op and mixer level but not at model level."""
    from types import SimpleNamespace

    from attnbench.metrics import latency
    from attnbench.metrics.base import MetricContext
    from attnbench.rounds import History
    from attnbench.suite import load_suite

    asked = []

    def fake_time_fn(fn, **kw):
        asked.append((kw["flush_l2"], kw["warmup_s"]))
        return timing.Timings([2e-3] * 3, host_overhead=0.5e-3, unroll=4)

    monkeypatch.setattr(latency, "time_fn", fake_time_fn)
    monkeypatch.setattr(latency, "gpu_throttle_reasons", lambda: None)
    monkeypatch.setattr(latency, "gpu_telemetry", lambda: {})
    suite = load_suite({"name": "t", "mechanisms": ["softmax_sdpa"], "resolution": 4, "rounds": 1, "warmup_s": 0.5})
    work = SimpleNamespace(fn=None, items=1, tokens=16)
    by_level = {}
    for level in ("op", "mixer", "model"):
        case = SimpleNamespace(device="cuda", level=level, mechanism="softmax_sdpa", options_dict={})
        ctx = MetricContext(case, None, suite, None, History(), work=work)
        by_level[level] = {(r.metric, r.stat): r for r in latency.latency_rows(ctx)}
    assert asked == [(True, 0.5), (True, 0.5), (False, 0.5)]
    row = by_level["op"]["host_overhead", "median"]
    assert (row.value, row.unit, row.stat) == (pytest.approx(0.5), "ms", "median") and "4 calls" in row.note
    assert by_level["op"]["latency", "median"].value == pytest.approx(2.0)
