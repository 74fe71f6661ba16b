"""Numbers the RAVLT paper reports, as cited constants (rows with source="reported").

The paper's "FLOPs" column counts multiply-accumulates (fvcore); it is reported here as metric
`macs`. All numbers are ImageNet-1k, 224 x 224, single crop, as in docs/rala.md ("RAVLT").
"""

from __future__ import annotations

from typing import Iterable

from attnbench.metrics.row import MetricRow

CITATION = (
    "Fan et al., Breaking the Low-Rank Dilemma of Linear Attention, CVPR 2025 (arXiv:2411.07635), "
    "ImageNet-1k classification results, 224x224"
)

REPORTED: dict[str, dict[str, float]] = {
    "ravlt_t": {"top1": 82.8, "params_m": 15, "gflops": 2.4},
    "ravlt_s": {"top1": 84.4, "params_m": 26, "gflops": 4.6},
    "ravlt_b": {"top1": 85.5, "params_m": 48, "gflops": 9.9},
    "ravlt_l": {"top1": 85.8, "params_m": 95, "gflops": 16.0},
}

# metric -> (REPORTED field, scale to the metric's unit, unit)
_METRICS = {
    "top1": ("top1", 1.0, "%"),
    "params": ("params_m", 1e6, "count"),
    "macs": ("gflops", 1e9, "MAC"),
}


def reported_rows(model_name: str, metrics: Iterable[str] = ("top1",)) -> list[MetricRow]:
    """MetricRow(source="reported", note=CITATION) rows of `model_name`; [] for models the paper does not list."""
    numbers = REPORTED.get(model_name)
    if numbers is None:
        return []
    rows = []
    for metric in metrics:
        if metric not in _METRICS:
            raise ValueError(f"no reported {metric!r} (known: {', '.join(_METRICS)})")
        field, scale, unit = _METRICS[metric]
        note = CITATION if metric != "macs" else f"{CITATION}; the paper's 'FLOPs' column (multiply-accumulates)"
        rows.append(MetricRow(metric, numbers[field] * scale, unit, note=note, source="reported"))
    return rows
