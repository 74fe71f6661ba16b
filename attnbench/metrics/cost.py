"""The suite metric `flops`: a case's costs and the rates they imply.

  flops          FLOP    analytic, the mechanism's flops(shape, level, pass_): fwd, fwd_bwd, or bwd (the
                         backward alone: fwd_bwd - fwd)
  bytes          B       analytic minimum traffic of one forward (fwd cases; bytes() has no pass)
  achieved_*     TFLOP/s, GB/s  the analytic counts over the median latency (when timed)
  frac_*         fraction of the measured peaks (attnbench.metrics.peak_fraction)
  flops_computed FLOP    analytic, what the implementation computes where that differs from `flops`
                         (mechanisms with a `flops_computed` method: block-sparse kernels count every
                         non-empty block of their mask in full, padded windows count their padding; the note
                         says how, e.g. the block mask's sparsity beside the ideal)
  achieved_tflops_computed  TFLOP/s  flops_computed over the median latency (the kernel's own rate)
  flops_counted  FLOP    torch FlopCounterMode on one call of the timed closure (where it can count)
Op and mixer level; at model level the workload's own rows carry the costs (attnbench.workloads.model),
and `with_rates` adds the achieved rate of its analytic FLOPs.
"""

from __future__ import annotations

import functools
from typing import Any

from attnbench import registry
from attnbench.metrics.base import Metric, MetricContext
from attnbench.metrics.peak_fraction import fraction_rows
from attnbench.metrics.row import MetricRow
from attnbench.registry import Mechanism, Shape

# count -> (unit, note, rate metric, scale, rate unit, rate note)
_COUNTS = {
    "flops": ("FLOP", "analytic", "achieved_tflops", 1e12, "TFLOP/s", "analytic"),
    "flops_computed": ("FLOP", "analytic computed", "achieved_tflops_computed", 1e12, "TFLOP/s", "analytic computed"),
    "bytes": ("B", "analytic minimum traffic", "achieved_gbps", 1e9, "GB/s", "analytic bytes"),
}


def analytic(mech: Mechanism, count: str, shape: Shape, options: dict[str, Any], **kw: Any) -> float | None:
    """mech.flops / mech.bytes (`count`) of `shape`, the case's options it takes bound as keywords (performer
    features, gate=False); None when the mechanism does not implement it."""
    fn = getattr(mech, count)
    try:
        return float(functools.partial(fn, **registry.accepted_options(fn, options))(shape, **kw))
    except NotImplementedError:
        return None


def cost_rows(ctx: MetricContext) -> list[MetricRow]:
    case, mech, shape = ctx.case, ctx.inputs.mech, ctx.inputs.shape
    if case.level not in ("op", "mixer"):
        return []
    options = case.options_dict
    counts = {"flops": analytic(mech, "flops", shape, options, level=case.level, pass_=case.pass_)}
    notes = {}
    if hasattr(mech, "flops_computed"):
        counts["flops_computed"] = analytic(mech, "flops_computed", shape, options, level=case.level, pass_=case.pass_)
        if hasattr(mech, "block_note"):
            fn = mech.block_note
            notes["flops_computed"] = fn(shape, level=case.level, **registry.accepted_options(fn, options))
    if case.pass_ == "fwd":
        counts["bytes"] = analytic(mech, "bytes", shape, options, level=case.level, dtype=case.dtype)
    rows: list[MetricRow] = []
    for count, value in counts.items():
        if value is None:
            continue
        unit, note, rate, scale, rate_unit, rate_note = _COUNTS[count]
        if count in notes:
            note = rate_note = f"{note}; {notes[count]}"
        rows.append(MetricRow(count, value, unit, note=note))
        if ctx.median_s:
            achieved = value / ctx.median_s / scale
            rows.append(MetricRow(rate, achieved, rate_unit, note=rate_note, stat="median"))
            if count != "flops_computed":  # frac_flops: of the analytic (useful) FLOPs
                rows += fraction_rows(ctx, **{rate: achieved})
    counted = _count_flops(ctx.work.fn) if mech.flop_counter_safe else None
    if counted is not None:
        rows.append(MetricRow("flops_counted", float(counted), "FLOP", note="flopcountermode"))
    return rows


def with_rates(rows: list[MetricRow], median_s: float | None) -> list[MetricRow]:
    """`rows`, each measured `flops` row followed by its achieved_tflops (model level: the workload's rows)."""
    out = []
    for row in rows:
        out.append(row)
        if row.metric == "flops" and median_s and row.source == "measured":
            out.append(
                MetricRow("achieved_tflops", row.value / median_s / 1e12, "TFLOP/s", note=row.note, stat="median")
            )
    return out


def _count_flops(fn) -> float | None:
    try:
        from attnbench.measure.flops import count_flops
    except ImportError:
        return None
    try:
        return count_flops(fn)
    except Exception:  # counting is best effort: an op FlopCounterMode cannot trace is simply not counted
        return None


METRIC = Metric("flops", cost_rows, uses_workload=True)
