"""Refuse, before the call, a case that cannot fit in memory or cannot finish within `timeout_s`.

Memory (`prune_reason`): the analytic need of a case (minimum traffic, x3 for fwd_bwd and bwd, plus the
mechanism's declared workspace) above 90 % of the memory available (GPU total, or CPU available memory
capped by `memory_limit_gb`) makes it `skipped: pruned: ...`.

Time (`too_slow_reason`): in-process on CPU a running call cannot be stopped: `timeout_s` is checked
between calls, so one call of `resolution: 1_000` softmax (10^14 FLOP) would run for minutes past it.
The analytic FLOPs of one call over a generous throughput (the matmul peak measured by `attnbench env
--probe` for this environment, else an optimistic default that no 2-16 core CPU reaches) give a lower
bound on its time; when that bound alone exceeds `timeout_s` the case becomes `skipped: predicted ...`
and is not run. Being a lower bound, it never refuses a case that could have finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attnbench import registry
from attnbench.metrics.cost import analytic
from attnbench.plan import Case
from attnbench.registry import Shape
from attnbench.suite import Suite

DEFAULT_FLOPS_PER_S = {"cpu": 2e12, "cuda": 2e15}  # above any CPU we run on / any current GPU (dense, 16-bit)
PRUNE_FRACTION = 0.9


def _shape(case: Case) -> Shape:
    return Shape(case.batch, case.heads, case.height, case.width, case.head_dim, case.dim)


def available_memory(device: str, memory_limit_gb: float | None = None) -> int | None:
    """Bytes a case may use on `device`: GPU total memory, or CPU available memory (capped by memory_limit_gb)."""
    if device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[1])
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if memory_limit_gb:
        limit = int(memory_limit_gb * 2**30)
        avail = min(avail, limit) if avail else limit
    return avail


def predicted_bytes(case: Case) -> float | None:
    """Analytic memory need: minimum traffic (inputs + outputs), x3 for fwd_bwd and bwd (grads and saved
    activations), plus the mechanism's `workspace_bytes` (e.g. materialised N x N scores) if declared."""
    if case.level == "model":
        return None
    mech, shape = registry.get(case.mechanism), _shape(case)
    need = analytic(mech, "bytes", shape, case.options_dict, level=case.level, dtype=case.dtype)
    if need is None:
        return None
    if case.pass_ in registry.BACKWARD_PASSES:
        need *= 3
    workspace = getattr(mech, "workspace_bytes", None)
    if workspace is not None:
        need += float(workspace(shape, level=case.level, dtype=case.dtype, pass_=case.pass_))
    return need


def prune_reason(case: Case, suite: Suite) -> str | None:
    """`skipped` message when the case's predicted memory need exceeds what is available, else None."""
    try:
        need = predicted_bytes(case)
    except Exception:  # a plugin's cost function failing: no prediction (the case itself reports the failure)
        need = None
    if need is None:
        return None
    avail = available_memory(case.device, suite.memory_limit_gb)
    if avail and need > PRUNE_FRACTION * avail:
        return f"pruned: predicted {need / 2**30:.1f} GiB > {PRUNE_FRACTION:.0%} of {avail / 2**30:.1f} GiB available"
    return None


def predicted_call_seconds(case: Case, peaks: dict[str, Any] | None = None) -> float | None:
    """Lower bound on the seconds of one timed call of `case` (op/mixer level), or None when unknown."""
    if case.level not in ("op", "mixer"):
        return None
    try:
        flops = analytic(
            registry.get(case.mechanism), "flops", _shape(case), case.options_dict, level=case.level, pass_=case.pass_
        )
    except Exception:  # a plugin's cost function failing: no bound
        return None
    if flops is None:  # no analytic count
        return None
    rate = DEFAULT_FLOPS_PER_S.get(case.device.split(":")[0], DEFAULT_FLOPS_PER_S["cuda"])
    measured = (((peaks or {}).get("matmul") or {}).get(case.dtype) or {}).get("value")  # TFLOP/s
    if measured:
        rate = max(float(measured) * 1e12 * 2, 1.0)  # 2x the measured peak: still a lower bound on time
    return flops / rate


def too_slow_reason(case: Case, suite: Suite, peaks: dict[str, Any] | None = None) -> str | None:
    """`skipped` message when one call of `case` cannot finish within the suite's timeout_s, else None."""
    seconds = predicted_call_seconds(case, peaks)
    if seconds is not None and seconds > suite.timeout_s:
        return (
            f"predicted: one call needs at least {seconds:.3g} s (analytic FLOPs at the peak rate), more than "
            f"timeout_s {suite.timeout_s:g}; shrink the case or raise timeout_s"
        )
    return None
