"""Static roofline ESTIMATE of the RALA Triton forward per launch (no GPU needed; see
mechanisms/rala/roofline.py for the model and its assumptions).

    PYTHONPATH=$PWD python scripts/rala_roofline.py [--device h200|h100|a100] [--copy-gbps GBPS]
        [--batch 64 --heads 1 --grid 56 --head-dim 64 --dtype bf16] [--mixer]

--copy-gbps: the copy bandwidth `python -m attnbench env --probe` measured on the device (default:
an assumed figure per device). Prints, in the style of `attnbench env`, one line per launch (grid,
HBM and L2 bytes and MUFU ops per token, estimated time and what bounds it), the split states' share
of the traffic, the forward's estimated time and fraction of copy bandwidth (the benchmark's
frac_bandwidth) to check a GPU run against, and the op-level RoPE choice in numbers
(in-kernel sin/cos vs (N, d/2) tables read from L2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DT = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def main(argv=None) -> int:
    import torch

    from mechanisms.rala.roofline import DEVICES, forward_estimate, rope_choice

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=sorted(DEVICES), default="h200")
    p.add_argument("--copy-gbps", type=float, help="measured copy bandwidth (GB/s) from `attnbench env --probe`")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--grid", type=int, default=56, help="square token grid side (N = grid^2)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=sorted(DT), default="bf16")
    p.add_argument("--mixer", action="store_true", help="mixer level (RoPE tables from memory)")
    a = p.parse_args(argv)
    dev = DEVICES[a.device]
    if a.copy_gbps:
        dev = dataclasses.replace(dev, copy_gbps=a.copy_gbps)
    n = a.grid * a.grid
    dtype = getattr(torch, DT[a.dtype])
    launches, s = forward_estimate(a.batch, a.heads, n, a.head_dim, dtype, dev, rope_tables=a.mixer)
    tokens = a.batch * a.heads * n
    plan = s["plan"]
    print(
        f"rala_triton forward roofline (ESTIMATE, not a measurement): {dev.name}, sm_{dev.cc}, {dev.sms} SMs, "
        f"copy {dev.copy_gbps:.0f} GB/s{' (given)' if a.copy_gbps else ' (assumed)'}"
    )
    print(
        f"  shape            B={a.batch} h={a.heads} N={n} d={a.head_dim} {a.dtype} "
        f"{'mixer (RoPE tables)' if a.mixer else 'op (in-kernel RoPE)'}"
    )
    print(
        f"  plan             BLOCK_N={plan.block_n} d-block={2 * plan.pb} splits={plan.splits} "
        f"blocks/split={plan.bps} warps={plan.num_warps} value columns/program of pass (b)={plan.vb}"
    )
    print(f"  {'launch':15s} {'programs':>8s} {'B/token':>8s} {'L2 B/tok':>8s} {'MUFU/tok':>8s} {'est us':>7s}  bound")
    for x in launches:
        bpt, mpt = x.per_token(tokens)
        l2t = x.l2_bytes / tokens
        print(f"  {x.kernel:15s} {x.programs:8d} {bpt:8.1f} {l2t:8.1f} {mpt:8.1f} {x.us:7.1f}  {x.bound}")
    print(f"  minimum bytes    {s['min_bytes'] / 1e6:.1f} MB (q twice, k, v, out), copy time {s['copy_us']:.1f} us")
    extra = 100 * s["partial_traffic_frac"]
    print(
        f"  kernel bytes     {s['hbm_bytes'] / 1e6:.1f} MB (+{extra:.1f} % over the minimum: "
        f"split states {100 * s['state_traffic_frac']:.1f} % written and read back from L2, "
        f"{100 * s['state_traffic_frac_if_read_from_hbm']:.1f} % if read from HBM; qbar partials)"
    )
    print(f"  MUFU per token   {s['mufu_per_token']:.0f}")
    print(
        f"  estimate         {s['est_us']:.1f} us -> {100 * s['frac_bandwidth']:.0f} % of copy bandwidth "
        f"(frac_bandwidth)"
    )
    r = rope_choice(a.head_dim, dtype, dev)
    print(
        f"  RoPE, per token of pass (b): HBM {r['hbm_ps']:.0f} ps; in-kernel sin/cos {r['sincos_mufu_ps']:.0f} ps "
        f"of MUFU (all MUFU {r['all_mufu_ps']:.0f} ps); (N, d/2) fp32 tables: +{r['table_bytes_per_token']} B "
        f"of L2 reads, L2 {r['l2_ps_without_tables']:.0f} -> {r['l2_ps_with_tables']:.0f} ps at "
        f"{dev.l2_gbps:.0f} GB/s (assumed); tables pay off above {r['breakeven_l2_gbps']:.0f} GB/s of L2"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
