"""peak_memory (B) of one call of the case's timed closure; the note names the convention
(`cuda_max_allocated` on a GPU, a labelled per-case measure on the CPU: attnbench.measure.memory)."""

from __future__ import annotations

from attnbench.measure.memory import peak_memory
from attnbench.metrics.base import Metric, MetricContext
from attnbench.metrics.row import MetricRow


def memory_rows(ctx: MetricContext) -> list[MetricRow]:
    peak, note = peak_memory(ctx.work.fn, ctx.case.device)
    return [MetricRow("peak_memory", float(peak), "B", note=note)]


METRIC = Metric("memory", memory_rows, uses_workload=True)
