"""Rounds: how a run repeats its timed cases so that the samples contain between-run noise.

A run measures every timed case in `suite.rounds` rounds. Each round runs in a fresh worker process
(isolation auto/process) and visits the cases in its own order, shuffled with a generator seeded by
(order_seed, round), so order effects (warm caches, thermal drift, a neighbour's load) fall on
different cases in different rounds. Shuffling moves whole units: the cases of one batch ladder
(same mechanism and shape, batches in suite order) stay together and ascending, so an OOM at a small
batch still predicts the larger ones within the round. A run with one round keeps the plan's order.

Sweeps (`sweeps:` in a suite, default 1): within a round the cases are visited `sweeps` times, each
sweep in its own seeded shuffled order and each visit timing 1/sweeps of the repeat budget
(`sweep_policy`), so one case's repeats are spread over the whole round instead of one short window.
A round's value (`round_value`) is the median of its repeats with one sweep, and the lowest of its
sweep medians with several: on a host whose speed drifts between a fast and slower phases for
seconds at a time (`attnbench env --stability`), a slow phase then spoils only some sweeps of a
round, not the round (the gate's calibration with sweeps: results/gate-calibration-cpu-20261202.csv).

Rounds before the last time the case only (latency samples). The last sweep of the last round measures
everything (verify, memory, FLOPs, ...) and its latency rows summarise the round values (`latency_summary`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnbench.measure.timing import RepeatPolicy, summarize
from attnbench.plan import Case


def ladder_key(case: Case) -> tuple:
    """Cases that differ only in batch form one ladder (OOM prediction runs along it)."""
    return (
        case.mechanism,
        case.level,
        case.variant,
        case.pass_,
        case.dtype,
        case.height,
        case.width,
        case.heads,
        case.dim,
        case.options,
        case.hardware,
    )


def units(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases grouped into ladders, in first-seen order; within a ladder the plan's order."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(ladder_key(case), []).append(case)
    return list(groups.values())


Sweeps = list[list[float]]  # one round of a case: the latency repeats of each of its sweeps, in sweep order


@dataclass(frozen=True)
class History:
    """What a case measured before this visit: its finished earlier rounds, and this round's earlier sweeps."""

    rounds: tuple[Sweeps, ...] = ()
    sweeps: tuple[list[float], ...] = ()

    def then(self, repeats: list[float]) -> History:
        """The history of the case's next sweep in this round."""
        return History(self.rounds, (*self.sweeps, list(repeats)))


def visits(suite) -> tuple[int, int]:
    """(rounds, sweeps) of a run of `suite`: the suite's when it times cases (latency), else one of each."""
    return (suite.rounds, suite.sweeps) if "latency" in suite.metrics else (1, 1)


def unit_order(n_units: int, round_index: int, seed: int, rounds: int, sweep: int = 0, sweeps: int = 1) -> list[int]:
    """Indices of the units in one sweep's order: shuffled by (seed, round), and by the sweep's index from the
    second sweep on, when there are several rounds or sweeps; the plan's order for a single visit."""
    if rounds > 1 or sweeps > 1:
        key = [seed, round_index] if sweep == 0 else [seed, round_index, sweep]
        return np.random.default_rng(key).permutation(n_units).tolist()
    return list(range(n_units))


def round_order(
    unit_list: Sequence[Sequence[Case]], round_index: int, seed: int, rounds: int, sweep: int = 0, sweeps: int = 1
) -> list[Case]:
    """The cases of one sweep of a round: units shuffled (`unit_order`), each ladder kept together."""
    return [case for i in unit_order(len(unit_list), round_index, seed, rounds, sweep, sweeps) for case in unit_list[i]]


def sweep_policy(policy: RepeatPolicy, sweeps: int) -> RepeatPolicy:
    """One visit's share of a round's repeat budget: min, max and min_time_s divided by `sweeps` (at least
    one repeat), so a round times about as long whatever the number of sweeps."""
    if sweeps <= 1:
        return policy
    low = max(1, math.ceil(policy.min / sweeps))
    return RepeatPolicy(low, max(low, math.ceil(policy.max / sweeps)), policy.min_time_s / sweeps, policy.target_ci)


def round_value(sweeps: Sequence[Sequence[float]]) -> float:
    """One round's value: the median of its repeats (one sweep), else the lowest of its sweep medians."""
    medians = [statistics.median(s) for s in sweeps if len(s)]
    if not medians:
        raise ValueError("a round without repeats has no value")
    return medians[0] if len(medians) == 1 else min(medians)


def latency_summary(samples_ms: list[float], history: History = History()) -> tuple[dict[str, float], str]:
    """(stats, note) of the latency rows; `samples_ms` are this visit's repeats. With earlier rounds: median, mean,
    min, p20, p80 and std of the round values (`round_value`, this round included), n = number of rounds; with
    one round: of its raw repeats, all sweeps together."""
    this_round = [*history.sweeps, samples_ms]
    prior_rounds = history.rounds
    if not prior_rounds:
        pooled = [v for s in this_round for v in s]
        return summarize(pooled), f"one round of {len(this_round)} sweeps" if len(this_round) > 1 else ""
    values = [round_value(r) for r in prior_rounds] + [round_value(this_round)]
    if len(this_round) > 1:
        note = f"over {len(values)} round values (each the fastest of {len(this_round)} sweep medians)"
        return summarize(values), note
    return summarize(values), f"over {len(values)} round medians"


def prior_from_samples(path: Path, sweeps: int = 1, metric: str = "latency") -> dict[str, dict[int, Sweeps]]:
    """case_id -> {round: sweeps} of the rounds complete in FILE.samples.csv (all `sweeps` present); a resumed
    run skips those rounds and measures a partly measured round again."""
    from attnbench import results, stats

    sample_path = results.companion(path, "samples.csv")
    if not sample_path.exists() or sample_path.stat().st_size == 0:
        return {}
    df = stats.last_blocks(results.load_samples(sample_path))
    df = df[df["metric"] == metric]
    out: dict[str, dict[int, Sweeps]] = {}
    for (case_id, rnd), g in df.groupby(["case_id", "round"], sort=True):
        by_sweep = [s["value"].astype(float).tolist() for _, s in g.groupby("sweep", sort=True)]
        if len(by_sweep) == sweeps:
            out.setdefault(str(case_id), {})[int(rnd)] = by_sweep
    return out
