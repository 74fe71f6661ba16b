"""A static roofline of the RALA Triton forward, per launch: an ESTIMATE made before any GPU run, so
the first measurement can be checked against it (scripts/rala_roofline.py prints it).

From the launch plan the launcher would use on the target (`plan_launch`: block size, splits, warps)
and the kernels' own structure, per launch: HBM bytes (q, k, v read, out written, fp32 split
partials and merged state), special-function-unit operations (MUFU: exp in phi and in the softmax,
the in-kernel sin/cos, one reciprocal per token) and tensor-core FLOPs. The time estimate of a launch
is max(bytes / copy bandwidth, MUFU ops / MUFU rate, FLOPs / dense rate) plus a fixed launch cost;
the forward's estimate is their sum, and its fraction of copy bandwidth is
(minimum bytes / copy bandwidth) / estimate, the quantity the benchmark reports as frac_bandwidth.

Assumptions (labelled, adjustable): copy bandwidth = what `attnbench env --probe` measures on the
device (default: 4.0 TB/s for an H200, ~83 % of its 4.8 TB/s datasheet figure, to be replaced by
the probe's number); MUFU rate = 16 ops/clock/SM (sm_80, sm_90) at the boost clock; 4 us per launch
(launch latency plus the tail of a wave); RoPE tables and the split partials of one (b, h) are read
from L2 where the kernel rereads them (not counted as HBM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechanisms.rala.launch import _next_pow2, plan_launch


@dataclass(frozen=True)
class Device:
    name: str
    cc: int
    sms: int
    clock_ghz: float
    copy_gbps: float  # assumed achievable copy bandwidth, GB/s (replace with the probe's measurement)
    dense_tflops: float  # bf16/fp16 dense tensor-core peak, TFLOP/s
    mufu_per_clk_sm: int = 16
    launch_us: float = 4.0


DEVICES = {
    "h200": Device("H200 SXM", 90, 132, 1.98, 4000.0, 989.0),
    "h100": Device("H100 SXM", 90, 132, 1.98, 2900.0, 989.0),
    "a100": Device("A100 SXM 80GB", 80, 108, 1.41, 1700.0, 312.0),
}
ES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}


@dataclass
class LaunchEstimate:
    kernel: str
    programs: int
    hbm_bytes: float
    mufu: float
    flops: float
    us: float
    bound: str

    def per_token(self, tokens: int) -> tuple[float, float]:
        return self.hbm_bytes / tokens, self.mufu / tokens


def forward_estimate(batch: int, heads: int, n: int, d: int, dtype: torch.dtype, dev: Device, *,
                     rope_tables: bool = False) -> tuple[list[LaunchEstimate], dict]:
    """Per-launch estimates of rala_forward (op level: in-kernel RoPE; rope_tables: the mixer's)."""
    bh = batch * heads
    plan = plan_launch(bh, n, d, dtype, torch.device("meta"), arch=dev.cc, sms=dev.sms, token_major=rope_tables)
    es = ES[dtype]
    s = plan.splits
    tokens = bh * n
    state = d * d + d + 2  # fp32 words of one split state (KV, ksum, m, l)
    sincos = 0 if rope_tables else d  # d/2 pairs x (sin, cos) per token, in every (b, h)
    launches = []

    def add(kernel, programs, hbm, mufu, flops):
        t_mem = hbm / (dev.copy_gbps * 1e3)  # us
        t_sfu = mufu / (dev.sms * dev.mufu_per_clk_sm * dev.clock_ghz * 1e3)
        t_mma = flops / (dev.dense_tflops * 1e6)
        t, bound = max((t_mem, "memory"), (t_sfu, "MUFU"), (t_mma, "tensor"))
        launches.append(LaunchEstimate(kernel, programs, hbm, mufu, flops, t + dev.launch_us, bound))

    add("_qbar_kernel", bh * s, tokens * d * es + bh * s * d * 4, tokens * d, 0.0)
    add("_state_kernel", bh * s, tokens * 2 * d * es + bh * s * state * 4, tokens * (d + 1 + sincos),
        tokens * 2 * d * d)
    fused = s <= 4
    if not fused:
        add("_merge_kernel", bh, bh * (s + 1) * state * 4, bh * s, 0.0)
    add("_out_kernel", bh * s, tokens * 2 * d * es + (bh * state * 4 if fused else 0), tokens * (d + 1 + sincos),
        tokens * 2 * d * d)
    min_bytes = 5 * tokens * d * es
    total_us = sum(x.us for x in launches)
    summary = {
        "plan": plan,
        "min_bytes": min_bytes,
        "hbm_bytes": sum(x.hbm_bytes for x in launches),
        "partial_traffic_frac": sum(x.hbm_bytes for x in launches) / min_bytes - 1.0,
        "est_us": total_us,
        "copy_us": min_bytes / (dev.copy_gbps * 1e3),
        "frac_bandwidth": min_bytes / (dev.copy_gbps * 1e3) / total_us,
        "mufu_per_token": sum(x.mufu for x in launches) / tokens,
        "d_block": max(32, _next_pow2(d)),
    }
    return launches, summary
