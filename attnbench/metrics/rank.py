"""kv_rank, kv_erank (where the mechanism has a KV buffer), out_rank, out_erank (unit "rank").

The tensors come from attnbench.workloads.rank_inputs (the case's own seeded inputs), the maths from
attnbench.measure.rank; each row's note states the inputs, the tolerance and the definitions.
The case option `weights` ("random" or a RAVLT checkpoint, mixer level) chooses the mixer's weights.
"""

from __future__ import annotations

from typing import Any

import torch

from attnbench.measure.rank import RTOL_CAP, RankStats, rank_stats
from attnbench.metrics.base import Metric, MetricContext
from attnbench.metrics.row import MetricRow
from attnbench.registry import Mechanism, Shape
from attnbench.workloads.inputs import CaseInputs
from attnbench.workloads.rank_inputs import rank_tensors

_DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _rows(kind: str, stats: RankStats, dtype: torch.dtype, context: str) -> list[MetricRow]:
    rows_, cols = stats.shape
    capped = " (capped)" if stats.rtol == RTOL_CAP else ""
    note = (
        f"{context}; {kind} per head {rows_}x{cols}, mean over {stats.count} (batch x heads); fp64 SVD; "
        f"rank tol = {stats.rtol:.3g} * s_max (max(M,N)*eps({_DTYPE_NAMES.get(dtype, str(dtype))}){capped}); "
        "erank = exp(entropy of s/sum(s)) (Roy & Vetterli 2007)"
    )
    prefix = "kv" if kind == "KV buffer" else "out"
    return [
        MetricRow(f"{prefix}_rank", stats.rank, "rank", note=note),
        MetricRow(f"{prefix}_erank", stats.erank, "rank", note=note),
    ]


def inputs_rank_rows(
    inputs: CaseInputs, *, options: dict[str, Any] | None = None, weights: str = "random"
) -> list[MetricRow]:
    """The rank rows of the case `inputs` describe (op or mixer level)."""
    tdtype = inputs.torch_dtype
    measured = rank_tensors(inputs, options=options, weights=weights)
    rows: list[MetricRow] = []
    if measured.kv is not None:
        rows += _rows("KV buffer", rank_stats(measured.kv, dtype=tdtype), tdtype, measured.context)
    rows += _rows("output", rank_stats(measured.out, dtype=tdtype), tdtype, measured.context)
    return rows


def rank_rows(
    mech: Mechanism,
    *,
    level: str,
    batch: int,
    heads: int,
    height: int,
    width: int,
    dim: int,
    dtype: str,
    device: str | torch.device,
    options: dict[str, Any] | None = None,
    weights: str = "random",
    seed: int = 0,
) -> list[MetricRow]:
    """`inputs_rank_rows` with the case given as keywords: level "op" (q, k, v (B, h, N, dim/heads), seeds
    seed..seed+2) or "mixer" (seeded init or `weights` from a checkpoint, x (B, dim, H, W) with seed + 10)."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    shape = Shape(batch, heads, height, width, dim // heads, dim)
    inputs = CaseInputs(mech, level, shape, dtype, str(device), "fwd", dict(options or {}), seed=seed)
    return inputs_rank_rows(inputs, weights=weights)


def _metric_rows(ctx: MetricContext) -> list[MetricRow]:
    options = dict(ctx.inputs.options)
    weights = options.pop("weights", "random")
    return inputs_rank_rows(ctx.inputs, options=options, weights=weights)


METRIC = Metric("rank", _metric_rows, uses_workload=False)
