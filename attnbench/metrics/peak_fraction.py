"""frac_flops / frac_bandwidth: an achieved rate as a fraction of the peak measured by `attnbench env --probe`
for this environment (no rows when it was never probed)."""

from __future__ import annotations

from attnbench.metrics.base import MetricContext
from attnbench.metrics.row import MetricRow


def fraction_rows(ctx: MetricContext, **achieved: float) -> list[MetricRow]:
    """Rows for `achieved_tflops=...` and/or `achieved_gbps=...` of the case."""
    if not ctx.peaks:
        return []
    from attnbench.measure.peaks import fractions

    key = ctx.peaks.get("key", "")
    dtype = ctx.case.dtype
    rows = []
    for metric, value in fractions(ctx.peaks, dtype=dtype, **achieved).items():
        what = "copy bandwidth" if metric == "frac_bandwidth" else f"{dtype} matmul peak"
        rows.append(MetricRow(metric, value, "fraction", note=f"vs measured {what} (peaks {key})", stat="median"))
    return rows
