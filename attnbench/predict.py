"""Refuse, before the call, a case that cannot finish within `timeout_s`.

In-process on CPU a running call cannot be stopped: `timeout_s` is checked between calls, so one call
of `resolution: 1_000` softmax (10^14 FLOP) would run for minutes past it. The analytic FLOPs of one
call over a generous throughput (the matmul peak measured by `attnbench env --probe` for this
environment, else an optimistic default that no 2-16 core CPU reaches) give a lower bound on its time;
when that bound alone exceeds `timeout_s` the case becomes `skipped: predicted ...` and is not run.
Being a lower bound, it never refuses a case that could have finished.
"""

from __future__ import annotations

import functools
from typing import Any

from attnbench import registry
from attnbench.registry import Shape

DEFAULT_FLOPS_PER_S = {"cpu": 2e12, "cuda": 2e15}  # above any CPU we run on / any current GPU (dense, 16-bit)


def predicted_call_seconds(case, peaks: dict[str, Any] | None = None) -> float | None:
    """Lower bound on the seconds of one timed call of `case` (op/mixer level), or None when unknown."""
    if case.level not in ("op", "mixer"):
        return None
    try:
        mech = registry.get(case.mechanism)
        shape = Shape(case.batch, case.heads, case.height, case.width, case.head_dim, case.dim)
        fn = functools.partial(mech.flops, **registry.accepted_options(mech.flops, case.options_dict))
        flops = float(fn(shape, level=case.level, pass_=case.pass_))
    except Exception:  # no analytic count (NotImplementedError) or a plugin's cost function failing: no bound
        return None
    rate = DEFAULT_FLOPS_PER_S.get(case.device.split(":")[0], DEFAULT_FLOPS_PER_S["cuda"])
    measured = (((peaks or {}).get("matmul") or {}).get(case.dtype) or {}).get("value")  # TFLOP/s
    if measured:
        rate = max(float(measured) * 1e12 * 2, 1.0)  # 2x the measured peak: still a lower bound on time
    return flops / rate


def too_slow_reason(case, suite, peaks: dict[str, Any] | None = None) -> str | None:
    """`skipped` message when one call of `case` cannot finish within the suite's timeout_s, else None."""
    seconds = predicted_call_seconds(case, peaks)
    if seconds is not None and seconds > suite.timeout_s:
        return (f"predicted: one call needs at least {seconds:.3g} s (analytic FLOPs at the peak rate), more than "
                f"timeout_s {suite.timeout_s:g}; shrink the case or raise timeout_s")  # fmt: skip
    return None
