"""The RALA backward's merge of the split partials (B1 -> B2, see triton_bwd.py) and its workspace layout:
`_dmerge_kernel` (S <= FUSE_MERGE_MAX_SPLITS: one program per (b, h)), or `_dmerge_chunks_kernel` then
`_dtotal_kernel` (more splits: in parallel over chunks of dKV, then T from the chunks' shares in order).
Deterministic: fixed summation orders, no atomics."""

from __future__ import annotations

import triton
import triton.language as tl

from mechanisms.rala.triton_helpers import state_ptrs, sum_in_order, sum_partials


@triton.jit
def dws_ptrs(DWS, BH, S, d):
    """The backward's workspace: dKV (BH, d, d) | dksum (BH, d) | T (BH) | then per split:
    dKV_s (BH, S, d, d) | dksum_s (BH, S, d) | dqbar_s (BH, S, d)."""
    dkv = DWS
    dks = dkv + BH * d * d
    t_all = dks + BH * d
    dkv_p = t_all + BH
    dks_p = dkv_p + BH * S * d * d
    return dkv, dks, t_all, dkv_p, dks_p, dks_p + BH * S * d


@triton.jit(do_not_specialize=["n_splits"])
def _dmerge_kernel(WS, DWS, n_splits, d, DB: tl.constexpr, RB: tl.constexpr):
    """dKV, dksum = sums of the split partials (fixed order); T = <KV, dKV>_F + ksum . dksum. dKV RB rows at a
    time (a whole d x d fp32 tile and KV's beside it spill at d-block 128 with triton 3.6: 116 B on sm_90,
    results/aot-sm90-sm80-triton36-20261203.txt's header)."""
    bh = tl.program_id(0)
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    DKV, DKS, T, DKV_P, DKS_P, _dqb = dws_ptrs(DWS, tl.num_programs(0), n_splits, d)
    col = tl.arange(0, DB)
    t_all = tl.zeros((RB,), dtype=tl.float32)
    for r0 in range(0, DB, RB):
        row = r0 + tl.arange(0, RB)
        msk2 = (row < d)[:, None] & (col < d)[None, :]
        off2 = row[:, None] * d + col[None, :]
        dkv = tl.zeros((RB, DB), dtype=tl.float32)
        for s in range(0, n_splits):
            dkv += tl.load(DKV_P + (bh * n_splits + s) * d * d + off2, mask=msk2, other=0.0)
        tl.store(DKV + bh * d * d + off2, dkv, mask=msk2)
        t_all += tl.sum(tl.load(KV + bh * d * d + off2, mask=msk2, other=0.0) * dkv, 1)
    dks = tl.zeros((DB,), dtype=tl.float32)
    for s in range(0, n_splits):
        dks += tl.load(DKS_P + (bh * n_splits + s) * d + col, mask=col < d, other=0.0)
    ks = tl.load(KS + bh * d + col, mask=col < d, other=0.0)
    tl.store(DKS + bh * d + col, dks, mask=col < d)
    tl.store(T + bh, tl.sum(t_all, 0) + tl.sum(ks * dks, 0))


@triton.jit(do_not_specialize=["n_splits"])
def _dmerge_chunks_kernel(WS, DWS, n_splits, d, SB: tl.constexpr, CW: tl.constexpr):
    """The merge for S > FUSE_MERGE_MAX_SPLITS, in parallel: grid (B*h, chunks + 1). Program (bh, c <
    chunks) sums the flat chunk [c*CW, (c+1)*CW) of the S row-major dKV_s, program (bh, chunks) the S
    dksum_s, in a fixed order; each stores its share of T = <KV, dKV>_F + ksum . dksum after the
    workspace's dqbar partials, which `_dtotal_kernel` adds in order. Deterministic, no atomics."""
    bh = tl.program_id(0)
    c = tl.program_id(1)
    n_kv = tl.num_programs(1) - 1  # chunks of dKV
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    DKV, DKS, _t, DKV_P, DKS_P, DQB_P = dws_ptrs(DWS, tl.num_programs(0), n_splits, d)
    col = c * CW + tl.arange(0, CW)
    if c < n_kv:
        acc = sum_partials(DKV_P + bh * n_splits * d * d, d * d, n_splits, c * CW, DKV_P, 0.0, False, SB, CW)
        tl.store(DKV + bh * d * d + col, acc, mask=col < d * d)
        share = tl.sum(acc * tl.load(KV + bh * d * d + col, mask=col < d * d, other=0.0), 0)
    else:
        j = tl.arange(0, CW)
        acc = sum_partials(DKS_P + bh * n_splits * d, d, n_splits, 0, DKS_P, 0.0, False, SB, CW)
        tl.store(DKS + bh * d + j, acc, mask=j < d)
        share = tl.sum(acc * tl.load(KS + bh * d + j, mask=j < d, other=0.0), 0)
    tl.store(DQB_P + tl.num_programs(0) * n_splits * d + bh * tl.num_programs(1) + c, share)


@triton.jit(do_not_specialize=["n_splits"])
def _dtotal_kernel(DWS, n_splits, n_shares, d, SB: tl.constexpr):
    """T = the parallel merge's n_shares shares added in a fixed order, one program per (b, h), stored
    where `_dmerge_kernel` puts it (B2 reads one scalar either way)."""
    bh = tl.program_id(0)
    _dkv, _dks, T, _dkv_p, _dks_p, DQB_P = dws_ptrs(DWS, tl.num_programs(0), n_splits, d)
    shares = DQB_P + tl.num_programs(0) * n_splits * d + bh * n_shares
    tl.store(T + bh, sum_in_order(shares, n_shares, SB))
