"""The row a metric returns: its value and the columns it decides (the executor adds the case's columns)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MetricRow:
    """One value of one metric of a case: params, a latency statistic, analytic FLOPs, a rank, top-1, ..."""

    metric: str
    value: float | None
    unit: str
    note: str = ""
    source: str = "measured"  # measured | reported (reported rows cite their origin in `note`)
    stat: str = "value"  # median | mean | min | p20 | p80 | std | n | value
