"""Time the RALA Triton forward and backward at one shape for several split counts S (the programs per
(b, h) along N), beside the planner's own choice, so a GPU run checks the split rule (`plan_launch`:
S = SMs // (B*h), more only while the split states stay within 5 % of the minimum HBM traffic) with a
measurement instead of the estimate.

    PYTHONPATH=$PWD python3 scripts/rala_splits.py [--shape B,h,H,W,d] [--dtype bf16|fp16]
        [--splits 1,2,4,8,16] [--out FILE.csv] [--dry-run]

Default shape: B=2, h=16, 32x32 tokens, d=64, bf16 (the example in `plan_launch`'s docstring: the rule
picks S=4 on an H100/H200, where two programs per SM would be S=8). Times are medians of `triton.testing.do_bench`
(CUDA events, warm-up outside the timed region) in ms; each row also gives the split states' share of the
pass's minimum HBM bytes (`state_traffic_fraction`). --dry-run prints the plans for an sm_90 part with
132 SMs and needs no GPU. Without a GPU the script says so and exits 2; under TRITON_INTERPRET=1 (CPU
tests) every launch runs once, untimed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
COLUMNS = [
    "batch",
    "heads",
    "tokens",
    "head_dim",
    "dtype",
    "splits",
    "planner_choice",
    "fwd_ms",
    "bwd_ms",
    "state_traffic_fwd",
    "state_traffic_bwd",
]


def _ints(text: str, what: str, count: int | None = None) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"rala_splits: --{what} needs comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values) or (count and len(values) != count):
        raise SystemExit(f"rala_splits: --{what} needs {count or 'one or more'} positive integers, got '{text}'")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="2,16,32,32,64", help="B,h,H,W,d (default 2,16,32,32,64)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--splits", default="1,2,4,8,16", help="split counts to time (the planner's is added)")
    p.add_argument("--out", help="also write the rows to this CSV")
    p.add_argument("--dry-run", action="store_true", help="print the plans (sm_90, 132 SMs); no GPU needed")
    args = p.parse_args(argv)
    b, h, height, width, d = _ints(args.shape, "shape", 5)
    wanted = _ints(args.splits, "splits")

    import torch

    from mechanisms.rala.launch import interpreting, plan_launch, state_traffic_fraction

    dtype, n = getattr(torch, DTYPES[args.dtype]), height * width
    if args.dry_run:
        for backward in (False, True):
            plan = plan_launch(b * h, n, d, dtype, torch.device("cpu"), backward=backward, arch=90, sms=132)
            print(
                f"{'bwd' if backward else 'fwd'}: planner S={plan.splits} (BLOCK_N {plan.block_n}, "
                f"{plan.num_warps} warps); timed S: {sorted(set(wanted) | {plan.splits})}"
            )
        return 0
    if not torch.cuda.is_available() and not interpreting():
        print("rala_splits: needs a CUDA GPU (none here); --dry-run prints the plans", file=sys.stderr)
        return 2
    from mechanisms.rala.triton_bwd import rala_backward
    from mechanisms.rala.triton_kernels import rala_forward

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v, g = (torch.randn(b, h, n, d, generator=gen, device=dev, dtype=dtype) for _ in range(4))
    grid = (height, width)
    chosen = plan_launch(b * h, n, d, dtype, dev).splits

    def median_ms(fn) -> float:
        if interpreting():  # CPU tests: the launches run, nothing is timed
            fn()
            return float("nan")
        from triton.testing import do_bench

        return float(do_bench(fn, return_mode="median"))

    rows = []
    for splits in sorted(set(wanted) | {chosen}):
        fwd_plan = plan_launch(b * h, n, d, dtype, dev, splits=splits)
        if any(r["splits"] == fwd_plan.splits for r in rows):
            continue  # more splits than token blocks: clamped to a count already timed
        bwd_plan = plan_launch(b * h, n, d, dtype, dev, backward=True, splits=splits)
        _, ws = rala_forward(q, k, v, grid, plan=fwd_plan)
        rows.append(
            {
                "batch": b,
                "heads": h,
                "tokens": n,
                "head_dim": d,
                "dtype": args.dtype,
                "splits": fwd_plan.splits,
                "planner_choice": splits == chosen,
                "fwd_ms": median_ms(lambda p=fwd_plan: rala_forward(q, k, v, grid, plan=p)),
                "bwd_ms": median_ms(lambda p=bwd_plan, w=ws: rala_backward(g, q, k, v, grid, None, w, plan=p)),
                "state_traffic_fwd": state_traffic_fraction(n, d, dtype.itemsize, fwd_plan.splits),
                "state_traffic_bwd": state_traffic_fraction(n, d, dtype.itemsize, bwd_plan.splits, backward=True),
            }
        )
    print(
        f"RALA Triton, B={b} h={h} N={n} ({height}x{width}) d={d} {args.dtype}, "
        f"{torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'interpreter (untimed)'}"
    )
    print(f"{'S':>4} {'fwd ms':>9} {'bwd ms':>9} {'state fwd':>10} {'state bwd':>10}")
    for r in rows:
        mark = "  <- planner" if r["planner_choice"] else ""
        print(
            f"{r['splits']:>4} {r['fwd_ms']:>9.4f} {r['bwd_ms']:>9.4f} {r['state_traffic_fwd']:>10.1%} "
            f"{r['state_traffic_bwd']:>10.1%}{mark}"
        )
    if args.out:
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
