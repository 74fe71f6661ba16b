"""Timing: warm-up outside the timed region, adaptive repeats, robust statistics.

CPU: time.perf_counter around synchronous calls; outside that pair, each repeat's CPU clocks and
involuntary switches are read and the repeat is flagged when it waited for a core
(attnbench.measure.preemption). CUDA: a pair of CUDA events per repeat with the device synchronised before
reading them; optionally an L2 flush (writing a buffer larger than L2) before every repeat, outside the
events, so op-level numbers are cold-cache.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from attnbench.measure.preemption import CpuProbe, preempted


class CaseTimeout(Exception):
    """A case ran past its timeout_s."""


@dataclass(frozen=True)
class RepeatPolicy:
    min: int = 5
    max: int = 100
    min_time_s: float = 0.5
    target_ci: float | None = None  # relative half-width of the median's 95% CI to reach (then stop)


def median_ci_halfwidth(samples: list[float]) -> float:
    """Relative half-width of a distribution-free 95% CI of the median (binomial order statistics:
    ranks n/2 -/+ 1.96 sqrt(n)/2); inf below 6 samples, where the interval is the whole range."""
    n = len(samples)
    if n < 6:
        return math.inf
    xs = sorted(samples)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    med = statistics.median(xs)
    return (xs[hi] - xs[lo]) / 2 / med if med > 0 else math.inf


def _need_more(samples: list[float], total: float, policy: RepeatPolicy) -> bool:
    n = len(samples)
    if n >= policy.max:
        return False
    if n < policy.min or total < policy.min_time_s:
        return True
    return policy.target_ci is not None and median_ci_halfwidth(samples) > policy.target_ci


def summarize(samples: list[float]) -> dict[str, float]:
    """median, mean, min, p20, p80, std (sample std; 0 for one sample), n."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")

    def pct(p: float) -> float:  # linear interpolation between closest ranks (numpy's default)
        pos = (n - 1) * p
        lo, hi = math.floor(pos), math.ceil(pos)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {
        "median": statistics.median(xs),
        "mean": statistics.fmean(xs),
        "min": xs[0],
        "p20": pct(0.2),
        "p80": pct(0.8),
        "std": statistics.stdev(xs) if n > 1 else 0.0,
        "n": float(n),
    }


class Timings(list):
    """Per-call times (a plain list of floats), with `preempted`: one flag per time (True where the call
    waited for a core), empty where not measured (CUDA); `recompiles`: graphs compiled during the timed
    repeats (None where not counted)."""

    def __init__(self, times=(), preempted=(), recompiles: int | None = None):
        super().__init__(times)
        self.preempted: list[bool] = list(preempted)
        self.recompiles = recompiles

    def scaled(self, factor: float) -> Timings:
        return Timings([t * factor for t in self], self.preempted, self.recompiles)


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class L2Flusher:
    """Writes a buffer larger than the GPU's L2 cache (256 MiB covers H100/H200's 50-60 MB)."""

    def __init__(self, device: str, nbytes: int = 256 * 2**20):
        self.buf = torch.empty(nbytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def time_fn(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    warmup: int = 3,
    policy: RepeatPolicy = RepeatPolicy(),
    timeout_s: float | None = None,
    flush_l2: bool = False,
    cuda_graph: bool = False,
    compiles: Callable[[], int] | None = None,
) -> Timings:
    """Run `fn` `warmup` times untimed, then time repeats; returns per-call seconds (a list; on the CPU
    with each repeat's preempted flag in `.preempted`).

    Repeats continue until at least `policy.min` samples and `policy.min_time_s` of timed work (and,
    with `policy.target_ci`, until the median's 95% CI is that tight), or `policy.max` samples.
    cuda_graph: capture one call into a CUDA graph after warm-up and time its replays (removes
    launch overhead; the closure must be capturable).
    Raises CaseTimeout once the wall time since the start passes timeout_s (checked between calls:
    an in-process call cannot be interrupted; process isolation can).
    compiles: a count of compiled graphs (attnbench.measure.compiler.graphs_compiled), read before the first
    and after the last timed repeat: the result's `recompiles` is the difference.
    """
    start = time.perf_counter()
    cuda = str(device).startswith("cuda")
    probe = None if cuda else CpuProbe(torch.get_num_threads())  # made before the warm-up: see CpuProbe.focus

    def check_timeout() -> None:
        if timeout_s is not None and time.perf_counter() - start > timeout_s:
            raise CaseTimeout(f"ran past timeout_s={timeout_s:g}")

    for _ in range(warmup):
        fn()
        synchronize(device)
        check_timeout()
    if cuda and cuda_graph:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # one more warm-up on the side stream, as torch's docs require before capture
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            fn()
        fn = graph.replay
    flusher = L2Flusher(device) if (cuda and flush_l2) else None
    samples = Timings()
    total = 0.0
    compiled_before = compiles() if compiles is not None else 0
    try:
        if probe is not None:
            probe.focus()
        while _need_more(samples, total, policy):
            if probe is None:
                dt = _time_cuda(fn, flusher)
            else:
                before = probe.read()
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                after = probe.read_after()
                samples.preempted.append(preempted(probe.sample(dt, before, after)))
            samples.append(dt)
            total += dt
            check_timeout()
    finally:
        if probe is not None:
            probe.close()
    if compiles is not None:
        samples.recompiles = compiles() - compiled_before
    return samples


def _time_cuda(fn: Callable[[], Any], flusher: L2Flusher | None) -> float:
    """One call between a pair of CUDA events (the L2 flush, if any, before the first), in seconds."""
    if flusher is not None:
        flusher()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / 1e3
