#!/usr/bin/env python3
"""CPU timing consistency check: attnbench's timer vs torch.utils.benchmark.Timer.

For a few real workloads (built exactly as the runner builds them), measure the median per-call
latency with attnbench.measure.timing.time_fn and with torch.utils.benchmark.Timer
(blocked_autorange) at the same thread count, alternating the two several times so drift affects
both alike; attnbench's side warms up as a suite does by default (`warmup` calls and `warmup_s` seconds).
Prints each pair and the relative difference; exits 1 if any differs by more than --tolerance (default
5%). A benchmark script, not a unit test: run it on a quiet machine. The GPU timer's counterpart, against
triton.testing.do_bench, is tests/test_timing_gpu.py (a stage of scripts/gpu_check.sh).

    python scripts/timing_agreement.py [--threads N] [--tolerance 0.05] [--rounds 5] [--min-time 1.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.utils.benchmark as tub

from attnbench import registry
from attnbench.loading import load_mechanisms
from attnbench.measure.timing import RepeatPolicy, summarize, time_fn
from attnbench.suite_schema import default
from attnbench.workloads.build import mixer_workload, op_workload

CASES = [
    ("softmax_sdpa", "op", 28, 1),
    ("softmax_eager", "op", 28, 1),
    ("rala_eager", "op", 28, 4),
    ("rala_eager", "mixer", 14, 4),
    ("softmax_sdpa", "mixer", 14, 4),
]


def build(name: str, level: str, res: int, batch: int):
    mech = registry.get(name)
    common = dict(batch=batch, heads=1, height=res, width=res, dtype="fp32", device="cpu", pass_="fwd")
    if level == "op":
        return op_workload(mech, head_dim=64, **common)
    return mixer_workload(mech, dim=64, **common)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.5, help="seconds of timed work per measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_mechanisms()
    worst = 0.0
    print(f"threads={args.threads} torch={torch.__version__}")
    print(f"{'case':34s} {'attnbench ms':>13s} {'torch Timer ms':>15s} {'diff':>7s}")
    for name, level, res, batch in CASES:
        work = build(name, level, res, batch)
        ours, theirs = [], []
        for _ in range(args.rounds):
            policy = RepeatPolicy(min=10, max=100_000, min_time_s=args.min_time)
            secs = time_fn(work.fn, warmup=default("warmup"), warmup_s=default("warmup_s"), policy=policy)
            ours.append(summarize(secs)["median"])
            timer = tub.Timer(stmt="fn()", globals={"fn": work.fn}, num_threads=args.threads)
            theirs.append(timer.blocked_autorange(min_run_time=args.min_time).median)
        a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
        diff = a / b - 1
        worst = max(worst, abs(diff))
        print(f"{name + ' ' + level + f' {res}x{res} B{batch}':34s} {a:13.4f} {b:15.4f} {diff:+7.1%}")
    print(f"largest difference {worst:.1%} (tolerance {args.tolerance:.0%})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
