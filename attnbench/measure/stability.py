"""How steady is this machine's timing right now? A probe for `attnbench env --stability`.

On a shared VM a bare loop of one tiny op (SDPA forward and backward, 49 tokens, one thread) can
switch between two speeds every few seconds, whatever the process, its address-space layout or the core
it is pinned to (the host's other tenants). A case measured for 0.1 s lands in one state, so its round
medians inherit that spread and the gate needs far more rounds to see a 30 % change. The probe times that
op in back-to-back windows and reports how much the windows' medians move (log-sd); the gate calibration
records it beside its figures (`host_log_sd` in results/gate-calibration-cpu-20261202.csv and .pairs.jsonl:
0.006-0.25 per pair on a 2-core VM), so that calibrations can be read against their host's noise.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

WINDOW_S = 0.25
SLOW_FACTOR = 1.15  # a window this much slower than the fast level counts as slow
UNSTEADY_LOG_SD = 0.05  # above this, a case's round medians move ~ as much (see module docstring)


@dataclass(frozen=True)
class Stability:
    seconds: float
    windows: int
    fast_us: float  # 10th percentile of the window medians
    median_us: float
    log_sd: float  # standard deviation of log window medians
    slow_fraction: float  # windows slower than SLOW_FACTOR x fast_us

    @property
    def steady(self) -> bool:
        return self.log_sd <= UNSTEADY_LOG_SD

    def summary(self) -> str:
        verdict = "steady" if self.steady else "UNSTEADY"
        return (
            f"{verdict}: {self.windows} windows of {WINDOW_S:g} s, tiny-op median {self.median_us:.1f} us "
            f"(fast level {self.fast_us:.1f} us), log-sd of window medians {self.log_sd:.3f}, "
            f"{self.slow_fraction:.0%} of windows > {SLOW_FACTOR:g}x the fast level"
        )

    def as_dict(self) -> dict:
        return asdict(self) | {"steady": self.steady}


def probe(seconds: float = 8.0) -> Stability:
    """Time a tiny SDPA forward+backward on CPU in back-to-back windows for `seconds` (one thread)."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be positive and finite, got {seconds}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(1, 1, 49, 64, generator=gen, requires_grad=True)
        k, v = torch.randn(2, 1, 1, 49, 64, generator=gen).unbind(0)

        def step() -> None:
            torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

        for _ in range(50):  # warm-up outside the windows
            step()
        medians: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            window_end, samples = time.perf_counter() + WINDOW_S, []
            while (now := time.perf_counter()) < window_end:
                step()
                samples.append(time.perf_counter() - now)
            medians.append(statistics.median(samples) * 1e6)
    finally:
        torch.set_num_threads(threads)
    ordered = sorted(medians)
    fast = ordered[len(ordered) // 10]
    logs = [math.log(m) for m in medians]
    return Stability(
        seconds=seconds,
        windows=len(medians),
        fast_us=fast,
        median_us=statistics.median(medians),
        log_sd=statistics.stdev(logs) if len(logs) > 1 else 0.0,
        slow_fraction=sum(m > SLOW_FACTOR * fast for m in medians) / len(medians),
    )
