"""The RALA Triton launch plan's split rule and the split-state traffic it trades (no triton needed).

Truth: the closed-form bytes of the split states (each of S programs per (b, h) writes one fp32 state of
d*d + d + 2 words, the merge one more) over the minimum traffic (5 N d elements forward, 9 N d backward),
and the invariants `plan_launch` documents: one wave, every SM busy, a second program per SM only
within the 5 % budget.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mechanisms.rala.launch import (
    MERGE_CHUNK,
    STATE_TRAFFIC_BUDGET,
    merge_chunks,
    plan_launch,
    state_traffic_fraction,
)
from mechanisms.rala.roofline import DEVICES, forward_estimate

META = torch.device("meta")


def test_issue_shape_splits_and_state_traffic():
    """B=2, h=16, N=1024, d=64, bf16 on sm_90 (132 SMs): 4 splits (128 programs), 12.7 % extra."""
    plan = plan_launch(32, 1024, 64, torch.bfloat16, META, arch=90, sms=132)
    assert plan.splits == 4
    expected = (4 + 1) * 4 * (64 * 64 + 64 + 2) / (5 * 1024 * 64 * 2)
    assert state_traffic_fraction(1024, 64, 2, plan.splits) == pytest.approx(expected)
    assert 0.12 < expected < 0.13
    # the benchmark's B=64, h=1, 56x56: 2 programs per SM stay within the budget
    bench = plan_launch(64, 3136, 64, torch.bfloat16, META, arch=90, sms=132)
    assert bench.splits == 4 and state_traffic_fraction(3136, 64, 2, 4) <= STATE_TRAFFIC_BUDGET


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("arch,sms", [(90, 132), (80, 108)])
def test_split_rule_invariants(arch, sms, dtype, backward):
    for bh in (1, 2, 5, 16, 32, 64, 128, 300):
        for n in (49, 196, 1024, 3136, 12544):
            for d in (32, 64, 96, 128):
                p = plan_launch(bh, n, d, dtype, META, arch=arch, sms=sms, backward=backward)
                n_blocks = -(-n // p.block_n)
                tag = (bh, n, d, p)
                assert 1 <= p.splits <= n_blocks, tag
                assert (p.splits - 1) * p.bps < n_blocks <= p.splits * p.bps, tag  # no empty split
                assert bh * p.splits <= max(bh, 2 * sms), tag  # one wave of at most 2 programs per SM
                floor = min(max(1, sms // bh), n_blocks)
                assert p.splits >= -(-n_blocks // -(-n_blocks // floor)), tag  # every SM busy (up to rounding)
                if p.splits > max(1, sms // bh):  # a second program per SM only within the budget
                    assert state_traffic_fraction(n, d, dtype.itemsize, p.splits, backward) <= STATE_TRAFFIC_BUDGET


def test_roofline_counts_the_same_state_bytes():
    """The roofline's HBM bytes above the minimum = split states (S + 1 per (b, h)) + qbar partials."""
    for batch, heads, grid, d in ((2, 16, 32, 64), (64, 1, 56, 64), (1, 1, 56, 96), (8, 4, 56, 64)):
        n = grid * grid
        launches, s = forward_estimate(batch, heads, n, d, torch.bfloat16, DEVICES["h100"])
        bh, S = batch * heads, s["plan"].splits
        qsum = bh * S * d * 4
        assert s["hbm_bytes"] - s["min_bytes"] - qsum == pytest.approx(s["state_traffic_frac"] * s["min_bytes"])
        assert ("_merge_kernel" in [x.kernel for x in launches]) == (S > 4)


def test_roofline_models_fp32_d_block_128():
    """fp32 at d-block 128: pass (b) runs 2 programs per split over KV's value columns (k side and its MUFU
    work twice, k's second read from L2), the mixer's token-major q is copied first, FLOPs count at the FMA
    rate; fp32 at d-block 64 and bf16 keep one program per split and no copy."""
    dev = DEVICES["h200"]
    n, bh = 56 * 56, 4

    def est(d, dtype, mixer):
        launches, s = forward_estimate(1, bh, n, d, dtype, dev, rope_tables=mixer)
        return {x.kernel: x for x in launches}, s

    wide, s = est(96, torch.float32, True)
    assert s["q_copy"] and s["value_column_programs"] == 2 and wide["copy q"].hbm_bytes == 2 * bh * n * 96 * 4
    narrow, _ = est(64, torch.float32, True)
    assert "copy q" not in narrow and wide["_state_kernel"].programs == 2 * bh * s["plan"].splits
    op, _ = est(96, torch.float32, False)
    assert "copy q" not in op
    half, _ = est(96, torch.bfloat16, True)
    assert half["_state_kernel"].mufu * 2 == pytest.approx(wide["_state_kernel"].mufu)
    # a slow FMA rate makes fp32 passes FMA-bound at exactly flops / rate + launch; bf16 never uses it
    slow = dataclasses.replace(dev, fp32_tflops=1.0)
    fp32_slow = {x.kernel: x for x in forward_estimate(1, bh, n, 96, torch.float32, slow, rope_tables=True)[0]}
    out = fp32_slow["_out_kernel"]
    assert out.bound == "FMA" and out.us == pytest.approx(out.flops / 1e6 + dev.launch_us)
    fast_tc = dataclasses.replace(dev, dense_tflops=1e-3)
    assert [x.us for x in forward_estimate(1, bh, n, 96, torch.float32, fast_tc, rope_tables=True)[0]] == [
        x.us for x in wide.values()
    ]
    assert forward_estimate(1, bh, n, 96, torch.bfloat16, slow, rope_tables=True)[0][-1].bound != "FMA"


def test_fp32_unaligned_token_major_warps_follow_the_compiler(monkeypatch):
    """FP32_UNALIGNED_TOK: 16 warps for fp32 token-major inputs with N % 16 != 0 in the sm_90 forward at
    d-block 128, only with triton >= 3.9 (3.6 and 3.8 spill at 16 and not at 8); everything else keeps 8."""
    from mechanisms.rala import launch

    f32 = torch.float32
    for version, warps in (((3, 9), 16), ((3, 10), 16), ((3, 6), 8), ((0, 0), 8)):
        monkeypatch.setattr(launch, "triton_version", lambda v=version: v)
        assert launch.launch_entry(90, False, f32, 128, True, aligned=False)[1] == warps, version
        assert launch.launch_entry(90, False, f32, 128, True, aligned=True)[1] == 8
        assert launch.launch_entry(80, False, f32, 128, True, aligned=False)[1] == 8
        assert launch.launch_entry(90, False, f32, 64, True, aligned=False)[1] == 8
        assert launch.launch_entry(90, True, f32, 128, True, aligned=False)[1] == 8
        assert launch.launch_entry(90, False, f32, 128, False, aligned=False)[1] == 8


def test_merge_chunks_cover_a_state():
    """A parallel merge's chunks cover the d x d state (the last one maybe partly) and ksum fits the one
    extra program."""
    for d in range(8, 129, 4):
        c = merge_chunks(d)
        assert (c - 1) * MERGE_CHUNK < d * d <= c * MERGE_CHUNK
        assert d <= MERGE_CHUNK
