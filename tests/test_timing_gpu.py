"""The CUDA timer against triton.testing.do_bench and torch.utils.benchmark, on a GPU (marker `gpu`: skipped
with a reason where CUDA is absent; scripts/gpu_check.sh runs this file as its own stage).

Each comparison alternates the two timers three times and compares the medians of their medians, so a drift
of the GPU's clocks falls on both. Both sides flush L2 before every repeat unless the test says otherwise.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from attnbench.measure.timing import RepeatPolicy, summarize, time_fn

pytestmark = pytest.mark.gpu

POLICY = RepeatPolicy(min=20, max=1000, min_time_s=0.3)
ROUNDS = 3


def ours(fn, *, flush_l2: bool = True, cuda_graph: bool = False):
    out = time_fn(fn, device="cuda", warmup=10, warmup_s=0.025, policy=POLICY, flush_l2=flush_l2, cuda_graph=cuda_graph)
    return summarize(out)["median"], out


def alternate(mine, theirs) -> tuple[float, float]:
    """(median of our medians, median of theirs) over ROUNDS alternations, in seconds."""
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(mine())
        b.append(theirs())
    return statistics.median(a), statistics.median(b)


def test_median_agrees_with_do_bench_on_a_1ms_matmul():
    """fp16 (8192 x 4096) @ (4096 x 8192): 0.55 TFLOP, about 1 ms on an H100. Within 5%; its host_overhead is
    0 (one launch per millisecond of work)."""
    from triton.testing import do_bench

    a = torch.randn(8192, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 8192, device="cuda", dtype=torch.float16)
    c = torch.empty(8192, 8192, device="cuda", dtype=torch.float16)

    def fn():
        return torch.mm(a, b, out=c)

    mine, theirs = alternate(lambda: ours(fn)[0], lambda: do_bench(fn, warmup=25, rep=300, return_mode="median") / 1e3)
    assert 0.2e-3 < theirs < 10e-3, f"the matmul took {theirs * 1e3:.3f} ms, not about 1 ms"
    assert mine == pytest.approx(theirs, rel=0.05)
    assert ours(fn)[1].host_overhead == 0.0


def test_median_agrees_with_do_bench_on_a_20us_kernel():
    """An elementwise multiply of 32 MiB into 32 MiB (64 MiB of traffic from a cold L2): about 20 us on an
    H100. Within 10%."""
    from triton.testing import do_bench

    x = torch.randn(8 * 2**20, device="cuda")
    y = torch.empty_like(x)

    def fn():
        return torch.mul(x, 2.0, out=y)

    mine, theirs = alternate(lambda: ours(fn)[0], lambda: do_bench(fn, warmup=25, rep=300, return_mode="median") / 1e3)
    assert 5e-6 < theirs < 200e-6, f"the kernel took {theirs * 1e6:.1f} us, not about 20 us"
    assert mine == pytest.approx(theirs, rel=0.10)


def test_graph_unroll_agrees_with_do_bench_cudagraph_on_a_20us_kernel():
    """cuda_graph (k calls per replay, each replay / k) against triton's graph timer (no flush on either side),
    within 10%."""
    from triton.testing import do_bench_cudagraph

    x = torch.randn(8 * 2**20, device="cuda")
    y = torch.empty_like(x)

    def fn():
        return torch.mul(x, 2.0, out=y)

    mine, theirs = alternate(
        lambda: ours(fn, flush_l2=False, cuda_graph=True)[0],
        lambda: do_bench_cudagraph(fn, rep=100, return_mode="median") / 1e3,
    )
    assert mine == pytest.approx(theirs, rel=0.10)
    assert ours(fn, flush_l2=False, cuda_graph=True)[1].unroll > 1


def test_median_agrees_with_torch_benchmark_without_flush():
    """Warm L2 on both sides: our median against torch.utils.benchmark's blocked_autorange (which synchronises
    inside its statement), within 10% on the ~1 ms matmul."""
    import torch.utils.benchmark as tub

    a = torch.randn(8192, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 8192, device="cuda", dtype=torch.float16)

    def fn():
        return a @ b

    timer = tub.Timer(stmt="fn(); torch.cuda.synchronize()", globals={"fn": fn, "torch": torch})
    mine, theirs = alternate(
        lambda: ours(fn, flush_l2=False)[0], lambda: timer.blocked_autorange(min_run_time=0.5).median
    )
    assert mine == pytest.approx(theirs, rel=0.10)


def test_a_launch_bound_form_shows_host_overhead_and_a_graph_removes_it():
    """64 launches of a one-element add per call: the host needs far longer to issue them than the GPU to run
    them, so host_overhead > 0; as a graph replay the same work is issued at once."""
    x = torch.zeros(1, device="cuda")

    def fn():
        for _ in range(64):
            x.add_(1.0)
        return x

    eager = ours(fn)[1]
    assert eager.host_overhead > 0.0
    graph = ours(fn, cuda_graph=True)[1]
    assert graph.host_overhead < eager.host_overhead and summarize(graph)["median"] < summarize(eager)["median"]
