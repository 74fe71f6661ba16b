"""What a metric is and what it reads: `Metric`, `MetricContext`, `PartialRows`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from attnbench.errors import AttnbenchError
from attnbench.metrics.row import MetricRow
from attnbench.plan import Case
from attnbench.rounds import History
from attnbench.suite import Suite
from attnbench.workloads.closure import Workload
from attnbench.workloads.inputs import CaseInputs


@dataclass
class MetricContext:
    """One case being measured: what its metrics read, and what they leave for the metrics after them."""

    case: Case
    inputs: CaseInputs  # the case resolved once, with its seeded input factory
    suite: Suite
    peaks: dict[str, Any] | None  # the peaks measured by `attnbench env --probe` for this environment
    prior: History  # the case's earlier rounds and this round's earlier sweeps (attnbench.rounds)
    work: Workload | None = None  # the timed closure, built once for the metrics that run it
    samples: dict[str, list[float]] = field(default_factory=dict)  # raw repeats, for FILE.samples.csv
    median_s: float | None = None  # the median latency in seconds once `latency` ran: rates derive from it


@dataclass(frozen=True)
class Metric:
    name: str  # the suite's `metrics:` entry
    rows: Callable[[MetricContext], list[MetricRow]]
    uses_workload: bool  # runs the case's timed closure (built once, after verification)


class PartialRows(AttnbenchError):
    """A metric could produce some rows (e.g. the reported accuracy) but not its measurement."""

    def __init__(self, rows: list[MetricRow], message: str):
        super().__init__(message)
        self.rows = rows
