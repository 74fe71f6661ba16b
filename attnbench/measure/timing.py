"""Timing: warm-up outside the timed region, adaptive repeats, robust statistics.

Warm-up (both devices): untimed calls until `warmup` calls and `warmup_s` seconds are done.

CPU: time.perf_counter around each synchronous call; outside that pair, each repeat's CPU clocks and
involuntary switches are read and the repeat is flagged when it waited for a core
(attnbench.measure.preemption).

GPU (docs/methodology.md, "GPU timing"), in the manner of triton.testing.do_bench: repeats are enqueued back
to back, one pair of CUDA events around each call, and the device is synchronised once per batch of repeats,
the batch sized from the last measured time per repeat to take about BATCH_S; the repeat policy and the
timeout are checked between batches. With `flush_l2` a buffer larger than L2 is written before every repeat,
outside its events. With `cuda_graph` the call is captured k times into one graph (k from the warm-up's time
per call, so a replay takes about GRAPH_REPLAY_S, at most GRAPH_MAX_UNROLL) and each replay's time is divided
by k. `host_overhead`: the host's time to issue a call beyond the device's time to run it.

The scheduling (what is enqueued, when the device is synchronised, what is divided) runs against a small
backend (`TimerBackend`): `CudaBackend` on a GPU, `HostBackend` for the CPU's warm-up, and in the tests a
simulated device with a fake clock.
"""

from __future__ import annotations

import gc
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


BATCH_S = 0.05  # GPU: wall time one batch of repeats aims at between two synchronisations
GRAPH_REPLAY_S = 1e-3  # cuda_graph: time one replay of the unrolled graph aims at
GRAPH_MAX_UNROLL = 100  # cuda_graph: at most this many calls captured into one graph


class Timings(list):
    """Per-call times (a plain list of floats), with `preempted`: one flag per time (True where the call
    waited for a core), empty where not measured (CUDA); GPU only: `host_overhead` (the host's time to issue a
    call beyond its device time, same unit as the times) and `unroll` (calls per timed graph replay);
    `recompiles`: graphs compiled during the timed repeats (None where not counted)."""

    def __init__(
        self,
        times=(),
        preempted=(),
        host_overhead: float | None = None,
        unroll: int = 1,
        recompiles: int | None = None,
    ):
        super().__init__(times)
        self.preempted: list[bool] = list(preempted)
        self.host_overhead = host_overhead
        self.unroll = unroll
        self.recompiles = recompiles

    def scaled(self, factor: float) -> Timings:
        overhead = None if self.host_overhead is None else self.host_overhead * factor
        return Timings([t * factor for t in self], self.preempted, overhead, self.unroll, self.recompiles)


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class L2Flusher:
    """Writes a buffer larger than the GPU's L2 cache (256 MiB covers H100/H200's 50-60 MB)."""

    def __init__(self, device: str, nbytes: int = 256 * 2**20):
        self.buf = torch.empty(nbytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


# -- backends: what the timer runs against -------------------------------------------------------------
class TimerBackend:
    """What the timer needs of a device. `asynchronous`: calls only enqueue work, which `synchronize` waits
    for (GPU); otherwise a call returns when its work is done (CPU) and the event methods are not used."""

    asynchronous = False

    def now(self) -> float:
        """The host clock, in seconds."""
        return time.perf_counter()

    def synchronize(self) -> None:
        """Wait until all enqueued work is done."""

    def event(self) -> Any:
        """A new timing event, to be recorded once."""
        raise NotImplementedError

    def record(self, event: Any) -> None:
        """Enqueue `event`: it takes the device's time when the work enqueued before it is done."""
        raise NotImplementedError

    def elapsed(self, begin: Any, end: Any) -> float:
        """Seconds between two recorded events, after a synchronize."""
        raise NotImplementedError

    def flush(self) -> None:
        """Enqueue an L2 flush."""
        raise NotImplementedError

    def capture(self, fn: Callable[[], Any], calls: int) -> Callable[[], Any]:
        """A callable that enqueues `calls` calls of `fn` at once (a CUDA graph replay)."""
        raise NotImplementedError


class HostBackend(TimerBackend):
    """The CPU: synchronous calls, time.perf_counter."""


class CudaBackend(TimerBackend):
    """The current CUDA device and stream: torch.cuda events, synchronize and graphs."""

    asynchronous = True

    def __init__(self, device: str = "cuda", flush_l2: bool = False):
        self.device = device
        self._flusher = L2Flusher(device) if flush_l2 else None  # allocated before any timing

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def event(self) -> Any:
        return torch.cuda.Event(enable_timing=True)

    def record(self, event: Any) -> None:
        event.record()

    def elapsed(self, begin: Any, end: Any) -> float:
        return begin.elapsed_time(end) / 1e3

    def flush(self) -> None:
        if self._flusher is None:
            raise RuntimeError("CudaBackend made without flush_l2")
        self._flusher()

    def capture(self, fn: Callable[[], Any], calls: int) -> Callable[[], Any]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # one more warm-up on a side stream, as torch's docs require before capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        collecting = gc.isenabled()
        gc.disable()  # a collection during capture could free memory the graph is using (triton does the same)
        try:
            with torch.cuda.graph(graph):
                for _ in range(calls):
                    fn()
        finally:
            if collecting:
                gc.enable()
        graph.replay()  # the first replay uploads the graph: untimed
        torch.cuda.synchronize()
        return graph.replay


# -- the timer ------------------------------------------------------------------------------------------
def time_fn(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    warmup: int = 3,
    warmup_s: float = 0.0,
    policy: RepeatPolicy = RepeatPolicy(),
    timeout_s: float | None = None,
    flush_l2: bool = False,
    cuda_graph: bool = False,
    backend: TimerBackend | None = None,
    compiles: Callable[[], int] | None = None,
) -> Timings:
    """Warm `fn` up untimed (`warmup` calls and `warmup_s` seconds, both), then time repeats; returns per-call
    seconds (a list; on the CPU with each repeat's preempted flag in `.preempted`, on a GPU with
    `.host_overhead` and `.unroll`).

    Repeats continue until at least `policy.min` samples and `policy.min_time_s` of timed work (and,
    with `policy.target_ci`, until the median's 95% CI is that tight), or `policy.max` samples.
    GPU (module docstring): batches of repeats enqueued back to back, one synchronise per batch; flush_l2:
    an L2 flush before every repeat, outside its events; cuda_graph: k calls captured into one graph, each
    replay one sample of its time / k (the closure must be capturable).
    Raises CaseTimeout once the wall time since the start passes timeout_s (checked between calls on the CPU,
    between batches on a GPU: an in-process call cannot be interrupted; process isolation can).
    `backend`: the device to run against (default: CudaBackend for a cuda device, else HostBackend).
    compiles: a count of compiled graphs (attnbench.measure.compiler.graphs_compiled), read before the first
    and after the last timed repeat: the result's `recompiles` is the difference.
    """
    if backend is None:
        backend = CudaBackend(device, flush_l2) if str(device).startswith("cuda") else HostBackend()
    start = backend.now()

    def check_timeout() -> None:
        if timeout_s is not None and backend.now() - start > timeout_s:
            raise CaseTimeout(f"ran past timeout_s={timeout_s:g}")

    if backend.asynchronous:
        per_call = warm_up(fn, backend, max(warmup, 1), warmup_s, check_timeout)  # one call at least: the estimate
        compiled_before = compiles() if compiles is not None else 0
        out = _time_batches(fn, backend, policy, per_call, check_timeout, flush_l2, cuda_graph)
        if compiles is not None:
            out.recompiles = compiles() - compiled_before
        return out
    probe = CpuProbe(torch.get_num_threads())  # made before the warm-up: see CpuProbe.focus
    samples = Timings()
    total = 0.0
    try:
        warm_up(fn, backend, warmup, warmup_s, check_timeout)
        compiled_before = compiles() if compiles is not None else 0
        probe.focus()
        while _need_more(samples, total, policy):
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
        probe.close()
    if compiles is not None:
        samples.recompiles = compiles() - compiled_before
    return samples


def warm_up(
    fn: Callable[[], Any], backend: TimerBackend, calls: int, seconds: float, check_timeout: Callable[[], None]
) -> float | None:
    """Call `fn` untimed until `calls` calls and `seconds` seconds (the backend's clock) are both done; returns
    the wall time per call of the last batch (None when no call was made).

    Synchronous backend: one call at a time, the timeout checked after each. Asynchronous: batches of calls
    enqueued back to back, one synchronise per batch and the timeout checked after it; the first batch is
    one call, each next one what the last batch's time per call says is left, at most the calls made so far
    (so a batch at most doubles them and a wrong first estimate costs little)."""
    t0 = backend.now()
    done = 0
    per_call: float | None = None
    while done < calls or backend.now() - t0 < seconds:
        n = 1
        if backend.asynchronous and per_call is not None:
            left_s = seconds - (backend.now() - t0)
            by_time = math.ceil(left_s / per_call) if per_call > 0 and left_s > 0 else 0
            n = max(1, min(max(calls - done, by_time), done))
        b0 = backend.now()
        for _ in range(n):
            fn()
        backend.synchronize()
        per_call = (backend.now() - b0) / n
        done += n
        check_timeout()
    return per_call


def graph_unroll(per_call_s: float | None) -> int:
    """Calls per captured graph: GRAPH_REPLAY_S / the time per call (rounded up), between 1 and GRAPH_MAX_UNROLL."""
    if not per_call_s or per_call_s <= 0:
        return GRAPH_MAX_UNROLL
    return max(1, min(GRAPH_MAX_UNROLL, math.ceil(GRAPH_REPLAY_S / per_call_s)))


def batch_size(per_repeat_s: float | None, taken: int, total: float, policy: RepeatPolicy) -> int:
    """Repeats in the next GPU batch: BATCH_S / the last wall time per repeat (rounded up), no more than the
    policy's unmet minimums (`policy.min` repeats, `policy.min_time_s` of timed work, with `total` done) seem to
    need by that time, at least 1 and at most what `policy.max` leaves."""
    room = max(1, policy.max - taken)
    if not per_repeat_s or per_repeat_s <= 0:
        return room
    n = math.ceil(BATCH_S / per_repeat_s)
    unmet = []
    if taken < policy.min:
        unmet.append(policy.min - taken)
    if total < policy.min_time_s:
        unmet.append(math.ceil((policy.min_time_s - total) / per_repeat_s))
    if unmet:
        n = min(n, max(unmet))
    return max(1, min(room, n))


def _time_batches(
    fn: Callable[[], Any],
    backend: TimerBackend,
    policy: RepeatPolicy,
    per_call: float | None,
    check_timeout: Callable[[], None],
    flush_l2: bool,
    cuda_graph: bool,
) -> Timings:
    """The GPU's timed repeats (module docstring): per batch, for each repeat [flush], begin event, the call (its
    issue time read on the host clock), end event; then one synchronise and the events read."""
    unroll = 1
    per_repeat = per_call
    if cuda_graph:
        unroll = graph_unroll(per_call)
        fn = backend.capture(fn, unroll)
        per_repeat = None if per_call is None else per_call * unroll
        check_timeout()
    samples = Timings(unroll=unroll)
    issue: list[float] = []
    total = 0.0
    while _need_more(samples, total, policy):
        n = batch_size(per_repeat, len(samples), total, policy)
        events = []
        b0 = backend.now()
        for _ in range(n):
            if flush_l2:
                backend.flush()
            begin, end = backend.event(), backend.event()
            backend.record(begin)
            h0 = backend.now()
            fn()
            issue.append((backend.now() - h0) / unroll)
            backend.record(end)
            events.append((begin, end))
        backend.synchronize()
        per_repeat = (backend.now() - b0) / n
        for begin, end in events:
            dt = backend.elapsed(begin, end)
            samples.append(dt / unroll)
            total += dt
        check_timeout()
    if samples:
        samples.host_overhead = max(0.0, statistics.median(issue) - statistics.median(samples))
    return samples
