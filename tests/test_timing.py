"""Timing: statistics by hand, adaptive repeats, and (GPU) agreement with triton and torch timers."""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch

from attnbench.measure.timing import RepeatPolicy, median_ci_halfwidth, summarize, time_fn


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
    samples = time_fn(lambda: None, warmup=0, policy=RepeatPolicy(min=6, max=500, min_time_s=0.0, target_ci=10.0))
    assert len(samples) == 6  # a loose target is met at once


@pytest.mark.gpu
def test_cuda_timer_agrees_with_triton_do_bench_and_torch_benchmark():
    """Median of our CUDA-event timer vs triton.testing.do_bench (both flushing L2) and vs
    torch.utils.benchmark (neither flushing) on a ~1 ms matmul: within 10%."""
    import torch.utils.benchmark as tub
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)

    def fn():
        return a @ b

    policy = RepeatPolicy(min=20, max=200, min_time_s=0.5)
    ours_flush = summarize(time_fn(fn, device="cuda", warmup=10, policy=policy, flush_l2=True))["median"]
    triton_ms = do_bench(fn, warmup=100, rep=500, return_mode="median") / 1e3
    assert ours_flush == pytest.approx(triton_ms, rel=0.10)
    ours_warm = summarize(time_fn(fn, device="cuda", warmup=10, policy=policy, flush_l2=False))["median"]
    torch_s = (
        tub.Timer(stmt="fn(); torch.cuda.synchronize()", globals={"fn": fn, "torch": torch})
        .blocked_autorange(min_run_time=1.0)
        .median
    )
    assert ours_warm == pytest.approx(torch_s, rel=0.10)


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
