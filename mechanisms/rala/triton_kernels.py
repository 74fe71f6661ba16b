"""RALA forward in Triton: the fused one-pass form of docs/rala.md ("One pass over the tokens").

Per (batch, head), with phi(x) = ELU(x) + 1, c = d^-0.5 and R_n the 2D rotation of token n:

    qbar  = mean_n phi(q_n)                                         pass (a)  _qbar_kernel
    s_m   = c qbar . phi(k_m),  alpha = softmax_m(s)
    KV    = sum_m alpha_m R_m(phi(k_m)) v_m^T   (d, d)              pass (b)  _state_kernel (online
    ksum  = sum_m alpha_m phi(k_m)              (d,)                          softmax, split over N)
                                                                              + _merge_kernel
    out_n = R_n(phi(q_n)) @ KV / (phi(q_n) . ksum + 1e-6)           pass (c)  _out_kernel

Grid of passes (a), (b), (c): (B*h, S) programs; program (bh, s) streams token blocks
[s*bps, (s+1)*bps) of BLOCK_N tokens. S ("splits", `plan_launch`) gives every SM at least one
program in one wave, so small B*h still fills the GPU, and two per SM only where the split states
stay within 5 % of the minimum traffic (fp32 at d-block 128: pass (b) on (B*h, S, 2), each program
KV's value columns of one half, `LaunchPlan.vb`). No (B, h, N, d) intermediate reaches memory: pass (a)
writes (B*h, S, d) partial sums, pass (b) per-split softmax states (running max m, running sum l,
unnormalised KV and ksum). They are merged with the max/sum rescaling rule  M = max_s m_s,
w_s = exp(m_s - M),  L = sum_s w_s l_s,  KV = sum_s w_s KV_s / L  in a fixed order (deterministic,
no atomics): for S <= 4 by every program of pass (c) itself (one launch fewer), else by
`_merge_kernel` in parallel, grid (B*h, chunks + 1): program (bh, c) sums one 256-float chunk of
the S row-major KV_s, the last one the S ks_s and stores (M, L) (17 programs per (b, h) at d = 64,
37 at d = 96), each after recomputing M and L from the S scalars, so no program reads more than
S x 1 KB (S <= ~264 at B*h = 1). The merged small state (qbar, KV, ksum, M, L) is what the backward
(triton_bwd.py) reuses. Everything fp32 lives in one workspace allocation.

HBM traffic: q twice, k and v once, out once (the minimum, 5 N d elements per (b, h)), plus the
split states: S + 1 fp32 states of d*d + d + 2 words per (b, h) written (the S partials and the
merged one), read back from L2 (`launch.state_traffic_fraction`). That is 4.1 % of the minimum
at the benchmark's B=64, h=1, N=3136, d=64, bf16 (S = 4 on 132 SMs) and 12.7 % at B=2, h=16,
N=1024 (S = 4; 2 programs per SM would choose S = 8: 23 % written, 43 % if the partials were
also read from HBM). Why not under 5 % there: plan_launch's docstring.

Layout and precision: inputs are addressed through their strides, so (B, h, N, d), (B, N, h, d)
and the token-contiguous views made by the mixer's head split are read without a copy, except where a
token-major kernel would spill (compiled fp32: the backward's inputs, and at d-block 128 the forward's
q; fp16/bf16 backward at N % 16 != 0 and d-block 128: launch.py). All math
is fp32; tl.dot operands are cast to the input dtype (fp16/bf16 tensor cores, fp32 accumulation)
or stay fp32 with input_precision="ieee" (no TF32) for fp32 inputs.

RoPE: the pair (2i, 2i+1) rotates by one angle, so q, k (and dq, dk, ksum, qbar) are handled as
their even and odd channels ("halves"), the rotation is elementwise on the halves, and d-by-d
matrices whose rows are rotated channels (KV, dKV) are held as two (d/2, d) halves. Channel-major
inputs load a full tile and split it in registers (tl.split); token-major inputs (the mixer's head
split, SPLIT) load the halves as two token-contiguous tiles and the launcher hands the RoPE tables
over token-major too, so no tile changes its register layout. Token loops: with token-major inputs
an unmasked main loop over whole blocks plus one masked tail block (the mask is then constant along
the contiguous tokens, so loads are 16 bytes wide); channel-major inputs keep one masked loop.
Normaliser: one reciprocal per token (`out_tile`: 1 / den of shape (BLOCK_N,)), multiplied into
the d outputs; the backward reuses it. Without tables the angles come from the token's (row, col):
theta = pos * angle[j] in fp32 with `angle` the spec's (d/2,) buffer read from a tiny tensor (so
theta is bitwise the reference tables' fp32 product), sin/cos in-kernel (`sincos`). With tables
(the mixer passes its Rope2d's (sin, cos)), they are loaded instead (any dtype, read as fp32).

Why the op level computes sin/cos in every (b, h) instead of loading (N, d/2) tables made once
per call (roofline.rope_choice prints these figures): per pair and token a table costs 8 bytes of
fp32 sin + cos read from L2, the in-kernel form 2 MUFU ops (+ ~5 FMA-pipe ops of range
reduction). H100 SXM: MUFU 16/clk/SM x 132 x 1.98 GHz = 4.2 T ops/s, so tables are cheaper only
where L2 delivers over 8 B / 2 ops x 4.2 T/s = 16.7 TB/s to the SMs, about 3x the ~5.5 TB/s
assumed (microbenchmarks of H100 report ~5-7 TB/s). Per token of pass (b) at d = 64, bf16: HBM
256 B (k, v) = 88 ps at 2.9 TB/s; in-kernel sin/cos 64 MUFU = 15 ps (all MUFU of the pass 31 ps,
35 % of the HBM time); tables 256 B from L2 on top of the 256 B of k, v crossing it = 93 ps at
5.5 TB/s, more than the HBM time: L2 would become the limit (and on H200, 4 TB/s HBM, clearly so).

Head dims: any d divisible by 4 up to 128; the d-block is the next power of two (96 -> 128)
with masked loads and stores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mechanisms.rala.launch import (
    FUSE_MERGE_MAX_SPLITS,
    MERGE_CHUNK,
    MERGE_SPLITS_BLOCK,
    MERGE_WARPS,
    LaunchPlan,
    empty_like_layout,
    interpreting,
    merge_chunks,
    out_pass_wants_channel_major,
    plan_launch,
    rope_args,
    workspace_size,
)
from mechanisms.rala.triton_helpers import (
    block_range,
    dot_halves,
    load_halves,
    load_rows_halves,
    load_tile,
    load_vec_halves,
    merged_max_sum,
    merged_state,
    mm,
    partial_ptrs,
    phi,
    phi_halves,
    rope_cs,
    rotate,
    state_ptrs,
    store_rows_halves,
    store_state,
    store_tile,
    store_vec_halves,
    sum_partials,
    tile_mask,
    value_columns_start,
)

EPS = 1e-6  # the spec's normaliser epsilon (after dividing ksum by L, as the reference has it)
DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# ---------------------------------------------------------------------------------------------
# forward kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _qbar_block(acc, q_base, tok, N, sqn, sqd, d, DB: tl.constexpr, MASK_N: tl.constexpr):
    x = load_tile(q_base, tok, N, sqn, sqd, d, DB, MASK_N).to(tl.float32)
    return acc + tl.where(tile_mask(tok, N, tl.arange(0, DB), d, MASK_N), phi(x), 0.0)


@triton.jit(do_not_specialize=["N", "n_heads", "bps"])
def _qbar_kernel(
    Q,
    WS,
    N,
    d,
    n_heads,
    bps,
    sqb,
    sqh,
    sqn,
    sqd,
    BLOCK_N: tl.constexpr,
    DB: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Pass (a): qsum[bh, s, :] = sum of phi(q_n) over split s's tokens (a (B*h, S, d) partial)."""
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    n_splits = tl.num_programs(1)
    _qbar, _kv, _ks, _ml, PART = state_ptrs(WS, tl.num_programs(0), d)
    QSUM, _kv_p, _ks_p, _m_p, _l_p = partial_ptrs(PART, tl.num_programs(0), n_splits, d)
    q_base = Q + (bh // n_heads).to(tl.int64) * sqb + (bh % n_heads).to(tl.int64) * sqh
    ch = tl.arange(0, DB)
    acc = tl.zeros((BLOCK_N, DB), dtype=tl.float32)
    b0, b_main, has_tail = block_range(N, bps, BLOCK_N, SPLIT)
    for blk in range(b0, b_main):
        acc = _qbar_block(acc, q_base, blk * BLOCK_N + tl.arange(0, BLOCK_N), N, sqn, sqd, d, DB, not SPLIT)
    if SPLIT:  # compile-time: the masked tail exists only with the unmasked main loop
        if has_tail:
            acc = _qbar_block(acc, q_base, b_main * BLOCK_N + tl.arange(0, BLOCK_N), N, sqn, sqd, d, DB, True)
    tl.store(QSUM + (bh * n_splits + sp) * d + ch, tl.sum(acc, 0), mask=ch < d)


@triton.jit
def _state_block(
    m_run,
    l_run,
    kv_e,
    kv_o,
    ks_e,
    ks_o,
    qbar_e,
    qbar_o,
    k_base,
    v_base,
    tok,
    N,
    W,
    d,
    dv,
    scale,
    skn,
    skd,
    svn,
    svd,
    ANGLE,
    SIN,
    COS,
    srn,
    srd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    VB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """One token block of pass (b): the online-softmax update of (m, l, KV, ksum); v_base and dv (valid
    columns) address this program's VB value columns."""
    ke, ko = load_halves(k_base, tok, N, skn, skd, d, BLOCK_N, PB, MASK_N, SPLIT)
    kp_e, kp_o = phi_halves(ke, ko, tok, N, d, PB, MASK_N)  # (BLOCK_N, PB) each
    vx = load_tile(v_base, tok, N, svn, svd, dv, VB, MASK_N)  # (BLOCK_N, VB), input dtype
    s_blk = scale * dot_halves(kp_e, kp_o, qbar_e, qbar_o)  # (BLOCK_N,)
    if MASK_N:
        s_blk = tl.where(tok < N, s_blk, -float("inf"))
    m_new = tl.maximum(m_run, tl.max(s_blk, 0))
    rescale = tl.exp(m_run - m_new)  # 0 on the first block
    p = tl.exp(s_blk - m_new)  # (BLOCK_N,), 0 on padding tokens
    l_run = l_run * rescale + tl.sum(p, 0)
    ce, se, co, so = rope_cs(tok, N, W, d, ANGLE, SIN, COS, srn, srd, BLOCK_N, PB, ROPE_FROM_MEM, FAST, MASK_N, SPLIT)
    rk_e, rk_o = rotate(kp_e, kp_o, ce, se, co, so)  # R(phi(k)) halves (BLOCK_N, PB)
    kv_e = kv_e * rescale + mm(tl.trans(rk_e * p[:, None]), vx, DOT_DTYPE)  # (PB, VB)
    kv_o = kv_o * rescale + mm(tl.trans(rk_o * p[:, None]), vx, DOT_DTYPE)
    ks_e = ks_e * rescale + tl.sum(kp_e * p[:, None], 0)  # (PB,)
    ks_o = ks_o * rescale + tl.sum(kp_o * p[:, None], 0)
    return m_new, l_run, kv_e, kv_o, ks_e, ks_o


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps"])
def _state_kernel(
    K,
    V,
    WS,
    ANGLE,
    SIN,
    COS,
    N,
    W,
    d,
    n_heads,
    bps,
    scale,
    inv_n,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    srn,
    srd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    VB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Pass (b): split s's online-softmax state over its tokens.

    Writes m (running max), l (sum of exp(s - m)), KV_s = sum exp(s_m - m) R(phi(k_m)) v_m^T and
    ks_s = sum exp(s_m - m) phi(k_m) to the split partials. Split 0 also stores qbar. Program
    (bh, s, c) computes KV_s's value columns [c VB, (c + 1) VB) (VB < the d-block: `LaunchPlan.vb`);
    the programs of c > 0 repeat the k side and leave ks_s, m, l, qbar to c = 0.
    """
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    c0 = value_columns_start(VB, PB)
    n_splits = tl.num_programs(1)
    QBAR, _kv, _ks, _ml, PART = state_ptrs(WS, tl.num_programs(0), d)
    QSUM, KV_P, KS_P, M_P, L_P = partial_ptrs(PART, tl.num_programs(0), n_splits, d)
    k_base = K + (bh // n_heads).to(tl.int64) * skb + (bh % n_heads).to(tl.int64) * skh
    v_base = V + (bh // n_heads).to(tl.int64) * svb + (bh % n_heads).to(tl.int64) * svh + c0 * svd
    qsum_e = tl.zeros((PB,), dtype=tl.float32)
    qsum_o = tl.zeros((PB,), dtype=tl.float32)
    for s in range(0, n_splits):  # fixed order: deterministic
        pe, po = load_vec_halves(QSUM + (bh * n_splits + s) * d, d, PB)
        qsum_e += pe
        qsum_o += po
    qbar_e = qsum_e * inv_n  # (PB,)
    qbar_o = qsum_o * inv_n
    if sp == 0 and c0 == 0:
        store_vec_halves(QBAR + bh * d, qbar_e, qbar_o, d, PB)

    m_run = -float("inf")
    l_run = 0.0
    kv_e = tl.zeros((PB, VB), dtype=tl.float32)  # rows 0, 2, 4, ... of KV
    kv_o = tl.zeros((PB, VB), dtype=tl.float32)  # rows 1, 3, 5, ...
    ks_e = tl.zeros((PB,), dtype=tl.float32)
    ks_o = tl.zeros((PB,), dtype=tl.float32)
    b0, b_main, has_tail = block_range(N, bps, BLOCK_N, SPLIT)
    for blk in range(b0, b_main):
        m_run, l_run, kv_e, kv_o, ks_e, ks_o = _state_block(
            m_run,
            l_run,
            kv_e,
            kv_o,
            ks_e,
            ks_o,
            qbar_e,
            qbar_o,
            k_base,
            v_base,
            blk * BLOCK_N + tl.arange(0, BLOCK_N),
            N,
            W,
            d,
            d - c0,
            scale,
            skn,
            skd,
            svn,
            svd,
            ANGLE,
            SIN,
            COS,
            srn,
            srd,
            BLOCK_N,
            PB,
            VB,
            ROPE_FROM_MEM,
            FAST,
            DOT_DTYPE,
            not SPLIT,
            SPLIT,
        )
    if SPLIT:  # compile-time: the masked tail exists only with the unmasked main loop
        if has_tail:
            m_run, l_run, kv_e, kv_o, ks_e, ks_o = _state_block(
                m_run,
                l_run,
                kv_e,
                kv_o,
                ks_e,
                ks_o,
                qbar_e,
                qbar_o,
                k_base,
                v_base,
                b_main * BLOCK_N + tl.arange(0, BLOCK_N),
                N,
                W,
                d,
                d - c0,
                scale,
                skn,
                skd,
                svn,
                svd,
                ANGLE,
                SIN,
                COS,
                srn,
                srd,
                BLOCK_N,
                PB,
                VB,
                ROPE_FROM_MEM,
                FAST,
                DOT_DTYPE,
                True,
                SPLIT,
            )

    part = bh * n_splits + sp
    store_rows_halves(KV_P + part * d * d, kv_e, kv_o, d, c0, PB, VB)
    if c0 == 0:
        store_vec_halves(KS_P + part * d, ks_e, ks_o, d, PB)
        tl.store(M_P + part, m_run)
        tl.store(L_P + part, l_run)


@triton.jit(do_not_specialize=["n_splits"])
def _merge_kernel(WS, n_splits, d, SB: tl.constexpr, CW: tl.constexpr):
    """Merge of the split states when S > FUSE_MERGE_MAX_SPLITS, in parallel: grid (B*h, chunks + 1).

    Program (bh, c < chunks) merges the flat chunk [c*CW, (c+1)*CW) of the S row-major KV_s (d*d
    floats each), program (bh, chunks) the S ks_s (d floats) and stores (M, L). Every program
    recomputes M and L from the S (m_s, l_s) scalars (2 S loads), then stores
    sum_s exp(m_s - M) part_s / L where `store_state` puts KV and ksum (the layout the backward
    reads). Fixed order, no atomics."""
    bh = tl.program_id(0)
    c = tl.program_id(1)
    n_kv = tl.num_programs(1) - 1  # chunks of KV
    _qbar, KV, KS, ML, PART = state_ptrs(WS, tl.num_programs(0), d)
    _qsum, KV_P, KS_P, M_P, L_P = partial_ptrs(PART, tl.num_programs(0), n_splits, d)
    m_all, l_all = merged_max_sum(M_P + bh * n_splits, L_P + bh * n_splits, n_splits, SB)
    inv_l = 1.0 / l_all
    col = c * CW + tl.arange(0, CW)
    if c < n_kv:
        acc = sum_partials(
            KV_P + bh * n_splits * d * d, d * d, n_splits, c * CW, M_P + bh * n_splits, m_all, True, SB, CW
        )  # (CW,)
        tl.store(KV + bh * d * d + col, acc * inv_l, mask=col < d * d)
    else:
        acc = sum_partials(KS_P + bh * n_splits * d, d, n_splits, 0, M_P + bh * n_splits, m_all, True, SB, CW)
        tl.store(KS + bh * d + tl.arange(0, CW), acc * inv_l, mask=tl.arange(0, CW) < d)
        tl.store(ML + bh * 2, m_all)
        tl.store(ML + bh * 2 + 1, l_all)


@triton.jit
def out_tile(
    qe,
    qo,
    tok,
    N,
    kv_e,
    kv_o,
    ks_e,
    ks_o,
    W,
    d,
    ANGLE,
    SIN,
    COS,
    srn,
    srd,
    eps,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Pass (c) on one q tile (raw halves qe, qo), shared by the forward and the backward's recompute:
    qp halves (BLOCK_N, PB), rotated halves, rope tables, num (BLOCK_N, DB), 1 / den (BLOCK_N,)."""
    qp_e, qp_o = phi_halves(qe, qo, tok, N, d, PB, MASK_N)
    inv_den = 1.0 / (dot_halves(qp_e, qp_o, ks_e, ks_o) + eps)  # (BLOCK_N,): one division per token
    ce, se, co, so = rope_cs(tok, N, W, d, ANGLE, SIN, COS, srn, srd, BLOCK_N, PB, ROPE_FROM_MEM, FAST, MASK_N, SPLIT)
    rq_e, rq_o = rotate(qp_e, qp_o, ce, se, co, so)
    num = mm(rq_e, kv_e, DOT_DTYPE) + mm(rq_o, kv_o, DOT_DTYPE)  # (BLOCK_N, DB)
    return qp_e, qp_o, rq_e, rq_o, ce, se, co, so, num, inv_den


@triton.jit
def _out_block(
    q_base,
    o_base,
    tok,
    N,
    W,
    d,
    kv_e,
    kv_o,
    ks_e,
    ks_o,
    ANGLE,
    SIN,
    COS,
    srn,
    srd,
    eps,
    sqn,
    sqd,
    son,
    sod,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    qe, qo = load_halves(q_base, tok, N, sqn, sqd, d, BLOCK_N, PB, MASK_N, SPLIT)
    # the same tuple unpacking as the backward's recompute (portable across triton versions)
    _qpe, _qpo, _rqe, _rqo, _ce, _se, _co, _so, num, inv_den = out_tile(
        qe,
        qo,
        tok,
        N,
        kv_e,
        kv_o,
        ks_e,
        ks_o,
        W,
        d,
        ANGLE,
        SIN,
        COS,
        srn,
        srd,
        eps,
        BLOCK_N,
        PB,
        ROPE_FROM_MEM,
        FAST,
        DOT_DTYPE,
        MASK_N,
        SPLIT,
    )  # num (BLOCK_N, DB), inv_den (BLOCK_N,)
    store_tile(o_base, num * inv_den[:, None], tok, N, son, sod, d, 2 * PB, MASK_N)


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps", "n_splits"])
def _out_kernel(
    Q,
    OUT,
    WS,
    ANGLE,
    SIN,
    COS,
    N,
    W,
    d,
    n_heads,
    bps,
    eps,
    n_splits,
    sqb,
    sqh,
    sqn,
    sqd,
    sob,
    soh,
    son,
    sod,
    srn,
    srd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SPLIT: tl.constexpr,
    FUSE_MERGE: tl.constexpr,
):
    """Pass (c): out_n = R(phi(q_n)) @ KV / (phi(q_n) . ksum + eps) for split s's tokens.

    FUSE_MERGE (few splits): every program merges the split states itself (S d^2 floats from L2)
    and split 0 stores the result, which saves the merge kernel's launch; else `_merge_kernel` has merged them.
    (Not split along KV's value columns like pass (b) at fp32 d-block 128: its spills there come from the
    q and RoPE tiles, aot_check measured no gain from halving KV.)
    """
    DB: tl.constexpr = 2 * PB
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    q_base = Q + (bh // n_heads).to(tl.int64) * sqb + (bh % n_heads).to(tl.int64) * sqh
    o_base = OUT + (bh // n_heads).to(tl.int64) * sob + (bh % n_heads).to(tl.int64) * soh
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    if FUSE_MERGE:
        kv_e, kv_o, ks_e, ks_o, m_all, l_all = merged_state(WS, bh, n_splits, d, PB)
        if sp == 0:
            store_state(WS, bh, kv_e, kv_o, ks_e, ks_o, m_all, l_all, d, PB)
    else:
        kv_e, kv_o = load_rows_halves(KV + bh * d * d, d, 0, PB, DB)  # (PB, DB) each
        ks_e, ks_o = load_vec_halves(KS + bh * d, d, PB)  # (PB,) each
    kv_e = kv_e.to(DOT_DTYPE)
    kv_o = kv_o.to(DOT_DTYPE)
    b0, b_main, has_tail = block_range(N, bps, BLOCK_N, SPLIT)
    for blk in range(b0, b_main):
        _out_block(
            q_base,
            o_base,
            blk * BLOCK_N + tl.arange(0, BLOCK_N),
            N,
            W,
            d,
            kv_e,
            kv_o,
            ks_e,
            ks_o,
            ANGLE,
            SIN,
            COS,
            srn,
            srd,
            eps,
            sqn,
            sqd,
            son,
            sod,
            BLOCK_N,
            PB,
            ROPE_FROM_MEM,
            FAST,
            DOT_DTYPE,
            not SPLIT,
            SPLIT,
        )
    if SPLIT:  # compile-time: the masked tail exists only with the unmasked main loop
        if has_tail:
            _out_block(
                q_base,
                o_base,
                b_main * BLOCK_N + tl.arange(0, BLOCK_N),
                N,
                W,
                d,
                kv_e,
                kv_o,
                ks_e,
                ks_o,
                ANGLE,
                SIN,
                COS,
                srn,
                srd,
                eps,
                sqn,
                sqd,
                son,
                sod,
                BLOCK_N,
                PB,
                ROPE_FROM_MEM,
                FAST,
                DOT_DTYPE,
                True,
                SPLIT,
            )


# ---------------------------------------------------------------------------------------------
# host side: launch plan and the forward launcher
# ---------------------------------------------------------------------------------------------
def token_major(x: torch.Tensor) -> bool:
    """(B, h, N, d) whose tokens are contiguous (the mixer's head split): halves load as two tiles."""
    return x.stride(2) == 1 and x.shape[2] > 1


def stream_meta(plan: LaunchPlan, from_mem: bool, dtype: torch.dtype, split: bool) -> dict:
    """Compile-time arguments shared by the token-streaming kernels."""
    return dict(
        BLOCK_N=plan.block_n,
        PB=plan.pb,
        ROPE_FROM_MEM=from_mem,
        FAST=not interpreting(),
        DOT_DTYPE=DOT_DTYPES[dtype],
        SPLIT=split,
        num_warps=plan.num_warps,
    )


def rala_forward(q, k, v, grid, rope=None, *, plan: LaunchPlan | None = None, compiled: bool | None = None):
    """Launch passes (a), (b), merge, (c). q, k, v: (B, h, N, d), any strides.

    Returns out (B, h, N, d) (q's layout where possible) and the fp32 workspace whose head is the
    small state the backward needs (`triton_helpers.state_ptrs`: qbar, KV, ksum, final max and sum).
    compiled: plan as for compiled kernels (True) or the interpreter (False); None: as this process runs.
    """
    b, h, n, d = q.shape
    bh, dev = b * h, q.device
    plan = plan or plan_launch(bh, n, d, q.dtype, dev, token_major=token_major(q))
    split = token_major(q)
    angle, sin, cos, srn, srd, from_mem = rope_args(rope, n, d, dev, token_major=split)
    meta = stream_meta(plan, from_mem, q.dtype, split)
    s, nw, w = plan.splits, plan.num_warps, grid[1]
    ws = torch.empty(workspace_size(bh, s, d), dtype=torch.float32, device=dev)
    qsplit, qrope, qmeta = split, (angle, sin, cos, srn, srd), meta
    if split and out_pass_wants_channel_major(d, q.dtype, compiled=compiled):
        q, qsplit = q.contiguous(), False  # passes (a) and (c) read q channel-major; out comes back contiguous
        *qrope, from_mem_q = rope_args(rope, n, d, dev, token_major=False)
        qmeta = stream_meta(plan, from_mem_q, q.dtype, False)
    out = empty_like_layout(q)
    _qbar_kernel[(bh, s)](
        q, ws, n, d, h, plan.bps, *q.stride(), BLOCK_N=plan.block_n, DB=2 * plan.pb, SPLIT=qsplit, num_warps=nw
    )
    cols = 2 * plan.pb // plan.vb  # programs per (b, h, split) along KV's value columns (LaunchPlan.vb)
    _state_kernel[(bh, s, cols)](
        k,
        v,
        ws,
        angle,
        sin,
        cos,
        n,
        w,
        d,
        h,
        plan.bps,
        d**-0.5,
        1.0 / n,
        *k.stride(),
        *v.stride(),
        srn,
        srd,
        VB=plan.vb,
        **meta,
    )
    fuse = s <= FUSE_MERGE_MAX_SPLITS
    if not fuse:
        _merge_kernel[(bh, merge_chunks(d) + 1)](ws, s, d, SB=MERGE_SPLITS_BLOCK, CW=MERGE_CHUNK, num_warps=MERGE_WARPS)
    _out_kernel[(bh, s)](
        q,
        out,
        ws,
        *qrope[:3],
        n,
        w,
        d,
        h,
        plan.bps,
        EPS,
        s,
        *q.stride(),
        *out.stride(),
        *qrope[3:],
        FUSE_MERGE=fuse,
        **qmeta,
    )
    return out, ws
