"""Rounds: how a run repeats its timed cases so that the samples contain between-run noise.

A run measures every timed case in `suite.rounds` rounds. Each round runs in a fresh worker process
(isolation auto/process) and visits the cases in its own order, shuffled with a generator seeded by
(order_seed, round), so order effects (warm caches, thermal drift, a neighbour's load) fall on
different cases in different rounds. Shuffling moves whole units: the cases of one batch ladder
(same mechanism and shape, batches in suite order) stay together and ascending, so an OOM at a small
batch still predicts the larger ones within the round. A run with one round keeps the plan's order.

Rounds before the last time the case only (latency samples). The last round measures everything
(verify, memory, FLOPs, ...) and its latency rows summarise the round medians (`latency_summary`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnbench.measure.timing import summarize
from attnbench.plan import Case


def ladder_key(case: Case) -> tuple:
    """Cases that differ only in batch form one ladder (OOM prediction runs along it)."""
    return (case.mechanism, case.level, case.variant, case.pass_, case.dtype, case.height, case.width,
            case.heads, case.dim, case.options, case.hardware)  # fmt: skip


def units(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases grouped into ladders, in first-seen order; within a ladder the plan's order."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(ladder_key(case), []).append(case)
    return list(groups.values())


def unit_order(n_units: int, round_index: int, seed: int, rounds: int) -> list[int]:
    """Indices of the units in one round's order: shuffled by (seed, round) when there are several rounds."""
    if rounds > 1:
        return np.random.default_rng([seed, round_index]).permutation(n_units).tolist()
    return list(range(n_units))


def round_order(unit_list: Sequence[Sequence[Case]], round_index: int, seed: int, rounds: int) -> list[Case]:
    """The cases of one round: units shuffled by (seed, round) when there are several rounds."""
    return [case for i in unit_order(len(unit_list), round_index, seed, rounds) for case in unit_list[i]]


def latency_summary(samples_ms: list[float], prior_rounds: Sequence[Sequence[float]]) -> tuple[dict[str, float], str]:
    """(stats, note) of the latency rows. With earlier rounds: median, mean, min, p20, p80 and std of the
    round medians (this round included), n = number of rounds; with one round: of its raw repeats."""
    if not prior_rounds:
        return summarize(samples_ms), ""
    medians = [statistics.median(r) for r in prior_rounds] + [statistics.median(samples_ms)]
    return summarize(medians), f"over {len(medians)} round medians"


def prior_from_samples(path: Path, metric: str = "latency") -> dict[str, dict[int, list[float]]]:
    """case_id -> {round: repeats} already in FILE.samples.csv (a resumed run skips those rounds)."""
    from attnbench import results, stats

    sample_path = results.companion(path, "samples.csv")
    if not sample_path.exists() or sample_path.stat().st_size == 0:
        return {}
    df = stats.last_blocks(results.load_samples(sample_path))
    df = df[df["metric"] == metric]
    out: dict[str, dict[int, list[float]]] = {}
    for (case_id, rnd), g in df.groupby(["case_id", "round"], sort=True):
        out.setdefault(str(case_id), {})[int(rnd)] = g["value"].astype(float).tolist()
    return out
