"""A static roofline of the RALA Triton forward, per launch: an ESTIMATE made without a GPU, so that
GPU measurements can be checked against it (scripts/rala_roofline.py prints it).

From the launch plan the launcher would use on the target (`plan_launch`: block size, splits, warps)
and the kernels' own structure, per launch: HBM bytes (q, k, v read, out written, fp32 split
states and merged state written), L2 bytes where a kernel rereads what the previous one wrote
(the split states), special-function-unit operations (MUFU: exp in phi and in the softmax, the
in-kernel sin/cos, one reciprocal per token) and tensor-core FLOPs. The time estimate of a launch
is max(HBM bytes / copy bandwidth, L2 bytes / L2 bandwidth, MUFU ops / MUFU rate, FLOPs / dense
rate) plus a fixed launch cost; the forward's estimate is their sum, and its fraction of copy
bandwidth is (minimum bytes / copy bandwidth) / estimate, the quantity the benchmark reports as
frac_bandwidth.

Assumptions (labelled, adjustable): copy bandwidth = what `attnbench env --probe` measures on the
device (default: 4.0 TB/s for an H200, ~83 % of its 4.8 TB/s datasheet figure, where the probe has not
run); L2-to-SM read bandwidth 5.5 TB/s on H100/H200 and 4.0 TB/s on A100 (no
measurement here; microbenchmarks of H100 report ~5-7 TB/s); MUFU rate = 16 ops/clock/SM (sm_80,
sm_90) at the boost clock; 4 us per launch (launch latency plus the tail of a wave); RoPE tables
and the split states are read from L2 where the kernels reread them, and every fp32 state
written reaches HBM once (`launch.state_traffic_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechanisms.rala.launch import (
    FUSE_MERGE_MAX_SPLITS,
    _next_pow2,
    merge_chunks,
    out_pass_wants_channel_major,
    plan_launch,
    state_traffic_fraction,
)


@dataclass(frozen=True)
class Device:
    name: str
    cc: int
    sms: int
    clock_ghz: float
    copy_gbps: float  # assumed achievable copy bandwidth, GB/s (replace with the probe's measurement)
    dense_tflops: float  # bf16/fp16 dense tensor-core peak, TFLOP/s
    fp32_tflops: float  # fp32 FMA (CUDA-core) peak, TFLOP/s: fp32 kernels run exact FMA dots, no tensor cores
    l2_gbps: float = 5500.0  # assumed L2 -> SM read bandwidth, GB/s
    mufu_per_clk_sm: int = 16
    launch_us: float = 4.0

    @property
    def mufu_per_us(self) -> float:
        return self.sms * self.mufu_per_clk_sm * self.clock_ghz * 1e3


DEVICES = {
    "h200": Device("H200 SXM", 90, 132, 1.98, 4000.0, 989.0, 67.0),
    "h100": Device("H100 SXM", 90, 132, 1.98, 2900.0, 989.0, 67.0),
    "a100": Device("A100 SXM 80GB", 80, 108, 1.41, 1700.0, 312.0, 19.5, l2_gbps=4000.0),
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
    l2_bytes: float = 0.0

    def per_token(self, tokens: int) -> tuple[float, float]:
        return self.hbm_bytes / tokens, self.mufu / tokens


def forward_estimate(
    batch: int, heads: int, n: int, d: int, dtype: torch.dtype, dev: Device, *, rope_tables: bool = False
) -> tuple[list[LaunchEstimate], dict]:
    """Per-launch estimates of rala_forward (op level: in-kernel RoPE; rope_tables: the mixer's, token-major
    inputs). fp32: FLOPs at the FMA rate; at d-block 128 pass (b) runs `cols` programs per split over KV's
    value columns (each recomputes the k side: its MUFU work, and k read again from L2), and token-major q
    is first copied channel-major (a launch of its own: N d elements read and written)."""
    bh = batch * heads
    plan = plan_launch(bh, n, d, dtype, torch.device("meta"), arch=dev.cc, sms=dev.sms, token_major=rope_tables)
    es = ES[dtype]
    s = plan.splits
    tokens = bh * n
    state = 4 * (d * d + d + 2)  # bytes of one fp32 split state (KV, ksum, m, l)
    sincos = 0 if rope_tables else d  # d/2 pairs x (sin, cos) per token, in every (b, h)
    table_l2 = 2 * d * es if rope_tables else 0  # the mixer's (N, d) sin and cos, from L2
    cols = 2 * plan.pb // plan.vb  # pass (b) programs per split along KV's value columns (fp32 d-block 128)
    flops_rate, flops_unit = (dev.fp32_tflops, "FMA") if dtype == torch.float32 else (dev.dense_tflops, "tensor")
    launches = []

    def add(kernel, programs, hbm, mufu, flops, l2=0.0):
        t, bound = max(
            (hbm / (dev.copy_gbps * 1e3), "memory"),
            (l2 / (dev.l2_gbps * 1e3), "L2"),
            (mufu / dev.mufu_per_us, "MUFU"),
            (flops / (flops_rate * 1e6), flops_unit),
        )
        launches.append(LaunchEstimate(kernel, programs, hbm, mufu, flops, t + dev.launch_us, bound, l2))

    fused = s <= FUSE_MERGE_MAX_SPLITS
    q_copy = rope_tables and out_pass_wants_channel_major(d, dtype, compiled=True)
    if q_copy:
        add("copy q", bh, 2 * tokens * d * es, 0.0, 0.0)
    add("_qbar_kernel", bh * s, tokens * d * es + bh * s * d * 4, tokens * d, 0.0)
    add(
        "_state_kernel",
        bh * s * cols,
        tokens * 2 * d * es + bh * s * state,
        tokens * (d + 1 + sincos) * cols,
        tokens * 2 * d * d,
        l2=tokens * (2 * d * es + table_l2) + tokens * d * es * (cols - 1),
    )
    if not fused:  # reads the S states from L2, writes the merged one
        chunks = merge_chunks(d)
        add("_merge_kernel", bh * (chunks + 1), bh * state, bh * (chunks + 1) * 2 * s, 0.0, l2=bh * s * state)
    # pass (c): fused, every program rereads the S states (L2) and split 0 writes the merged state
    state_l2 = bh * s * (s if fused else 1) * state
    add(
        "_out_kernel",
        bh * s,
        tokens * 2 * d * es + (bh * state if fused else 0),
        tokens * (d + 1 + sincos),
        tokens * 2 * d * d,
        l2=tokens * (2 * d * es + table_l2) + state_l2,
    )
    min_bytes = 5 * tokens * d * es
    total_us = sum(x.us for x in launches)
    hbm = sum(x.hbm_bytes for x in launches)
    summary = {
        "plan": plan,
        "min_bytes": min_bytes,
        "hbm_bytes": hbm,
        "partial_traffic_frac": hbm / min_bytes - 1.0,  # split states written + qbar partials (+ the q copy)
        "q_copy": q_copy,
        "value_column_programs": cols,
        "state_traffic_frac": state_traffic_fraction(n, d, es, s),
        "state_traffic_frac_if_read_from_hbm": state_traffic_fraction(n, d, es, s) + s * state / (5 * n * d * es),
        "est_us": total_us,
        "copy_us": min_bytes / (dev.copy_gbps * 1e3),
        "frac_bandwidth": min_bytes / (dev.copy_gbps * 1e3) / total_us,
        "mufu_per_token": sum(x.mufu for x in launches) / tokens,
        "d_block": max(32, _next_pow2(d)),
    }
    return launches, summary


def rope_choice(d: int, dtype: torch.dtype, dev: Device) -> dict:
    """Op-level RoPE, per token of pass (b) (k, v streamed): in-kernel sin/cos (d MUFU ops) vs
    (N, d/2) fp32 sin and cos tables made once per call and read from L2 (4 d bytes), in ps, next
    to the pass's HBM time and L2 time without tables; `breakeven_l2_gbps`: the L2 bandwidth above
    which the tables would be cheaper than the MUFU work they replace (8 B per 2 MUFU ops)."""
    es = ES[dtype]
    hbm = 2 * d * es  # k and v
    all_mufu = 2 * d + 1  # phi (d exp), the softmax's exp, sin/cos (d)
    return {
        "hbm_ps": hbm / dev.copy_gbps * 1e3,
        "sincos_mufu_ps": d / dev.mufu_per_us * 1e6,
        "all_mufu_ps": all_mufu / dev.mufu_per_us * 1e6,
        "l2_ps_without_tables": hbm / dev.l2_gbps * 1e3,
        "l2_ps_with_tables": (hbm + 4 * d) / dev.l2_gbps * 1e3,
        "table_bytes_per_token": 4 * d,
        "breakeven_l2_gbps": 4.0 * dev.mufu_per_us / 1e3,
    }
