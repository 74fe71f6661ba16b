"""top1 / top5 (%): ImageNet accuracy of a model-level case's checkpoint (attnbench.models.imagenet), with
the paper's reported numbers beside it (source=reported, cited in `note`).

Without `data:` or the variant's `checkpoints.<variant>.path` the case is `skipped` with the reported
rows only. Model-level cases that do not ask for accuracy still carry the reported top-1 beside their
costs (`reported_beside_costs`).
"""

from __future__ import annotations

import os

from attnbench.errors import AttnbenchError
from attnbench.metrics.base import Metric, MetricContext, PartialRows
from attnbench.metrics.row import MetricRow
from attnbench.models.reported import reported_rows
from attnbench.plan import Case


def accuracy_rows(ctx: MetricContext) -> list[MetricRow]:
    case, suite = ctx.case, ctx.suite
    rows = list(reported_rows(case.model))
    spec = suite.checkpoints.get(case.model)
    if suite.data is None or not spec or not spec.get("path"):
        missing = "data:" if suite.data is None else f"checkpoints.{case.model}.path"
        raise PartialRows(rows, f"no measured accuracy: set `{missing}` in the suite to evaluate")
    from attnbench.models.imagenet import accuracy_rows as evaluate

    try:
        rows += evaluate(
            case.model,
            data=suite.data,
            checkpoint=spec["path"],
            ema=spec.get("ema", False),
            image_size=case.height,
            batch_size=case.batch,
            device=case.device,
            dtype=case.dtype,
            num_workers=min(4, os.cpu_count() or 1),
        )
    except AttnbenchError as exc:
        raise PartialRows(rows, str(exc)) from None
    return rows


def reported_beside_costs(case: Case) -> list[MetricRow]:
    """The paper's accuracy of a model-level case that does not measure it ([] at other levels)."""
    return reported_rows(case.model) if case.level == "model" else []


METRIC = Metric("accuracy", accuracy_rows, uses_workload=False)
