"""RALA backward in Triton: recompute, never store (B, h, N, d) intermediates.

Notation per (batch, head) as in triton_kernels.py: qp_n = phi(q_n), kp_m = phi(k_m), c = d^-0.5,
qbar = mean_n qp_n, s_m = c qbar . kp_m, alpha_m = exp(s_m - M) / L (M, L: the forward's final
max and sum), rk_m = R_m(kp_m), KV = sum_m alpha_m rk_m v_m^T, ksum = sum_m alpha_m kp_m,
num_n = R_n(qp_n)^T KV, den_n = qp_n . ksum + eps, out_n = num_n / den_n. g_n = dLoss/dout_n.

Derivation (R_n is linear, with transpose R_n^T):
  from out_n = num_n / den_n:     gn_n := dnum_n = g_n / den_n,   dden_n = -(g_n . num_n) / den_n^2
  from num_n = R_n(qp_n)^T KV:    dKV  = sum_n R_n(qp_n) gn_n^T,  dqp_n  = R_n^T(KV gn_n)   (+ below)
  from den_n = qp_n . ksum:       dksum = sum_n dden_n qp_n,      dqp_n += dden_n ksum
  from KV and ksum (alpha fixed): dv_m  = alpha_m dKV^T rk_m,
                                  dkp_m = alpha_m (R_m^T(dKV v_m) + dksum)                  (+ below)
  through alpha = softmax(s):     t_m   = dalpha_m = rk_m . (dKV v_m) + kp_m . dksum
                                  ds_m  = alpha_m (t_m - T),  T = sum_m alpha_m t_m = <KV, dKV>_F + ksum . dksum
                                  (T needs only the small state: no extra pass over tokens; it is
                                  ~0 up to the epsilon, since out is invariant to scaling alpha)
  through s_m = c qbar . kp_m:    dkp_m += c ds_m qbar,       dqbar = c sum_m ds_m kp_m
  through qbar = mean_n qp_n:     dqp_n += dqbar / N
  through phi:                    dq = dqp * phi'(q), dk = dkp * phi'(k), phi'(x) = 1 (x > 0) else exp(x)

Passes (grid (B*h, S) like the forward; the merge per (b, h) for S <= 4, in parallel for more; the merge
kernels and the workspace layout live in triton_bwd_merge.py):
  B1 `_dstate_kernel`:  over q, g: recompute num, den; partial dKV, dksum per split
  `_dmerge_kernel`:     S <= 4: one program per (b, h) sums the partials in a fixed order; T
  or `_dmerge_chunks_kernel` + `_dtotal_kernel`: S > 4: grid (B*h, chunks + 1) sums chunks of the
                        partials, each with its share of T; then one program per (b, h) adds the
                        shares in order (deterministic, no atomics; one launch more, where a
                        single program would otherwise read S d x d partials serially)
  B2 `_dkv_kernel`:     over k, v: recompute alpha, rk; write dk, dv; partial dqbar per split (fp32 at
                        d-block 128: dKV read VB value columns at a time, `LaunchPlan.vb`)
  B3 `_dq_kernel`:      over q, g: recompute num, den; dq (needs dqbar from every split of B2)
Extra memory: one fp32 workspace of O(B h S d^2) (dKV, dksum, T and the split partials); HBM
traffic: q and g read twice, k and v once, dq, dk, dv written once.
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from mechanisms.rala.launch import (
    FUSE_MERGE_MAX_SPLITS,
    MERGE_CHUNK,
    MERGE_SPLITS_BLOCK,
    MERGE_WARPS,
    backward_wants_channel_major,
    dworkspace_size,
    empty_like_layout,
    merge_chunks,
    plan_launch,
    rope_args,
)
from mechanisms.rala.triton_bwd_merge import _dmerge_chunks_kernel, _dmerge_kernel, _dtotal_kernel, dws_ptrs
from mechanisms.rala.triton_helpers import (
    block_range,
    dot_halves,
    load_halves,
    load_rows_halves,
    load_tile,
    load_vec_halves,
    mm,
    phi_halves,
    rope_cs,
    rotate,
    state_ptrs,
    store_halves,
    store_rows_halves,
    store_tile,
    store_vec_halves,
)
from mechanisms.rala.triton_kernels import (
    EPS,
    out_tile,
    stream_meta,
    token_major,
)

# tl.range's disable_licm (triton >= 3.5): keeps the column loop's dKV loads in the loop. Without it triton
# 3.6 hoists them and `_dkv` spills 8 B at fp32 d-block 128 (with it: 251-252 registers, 0 B; triton 3.9:
# 156-182 registers with it, 244-254 without, 0 B either way).
RANGE_DISABLE_LICM = tl.constexpr("disable_licm" in inspect.signature(tl.range.__init__).parameters)


@triton.jit
def dphi(x):
    """d phi / dx: 1 for x > 0, exp(x) otherwise."""
    return tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))


@triton.jit
def rotate_t(ye, yo, ce, se, co, so):
    """R^T(y) on halves (the transpose of `rotate`, = rotation by -theta for shared angles)."""
    return ye * ce + yo * so, yo * co - ye * se


@triton.jit
def _dstate_block(
    dkv_e,
    dkv_o,
    dks_e,
    dks_o,
    q_base,
    g_base,
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
    sgn,
    sgd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    qe, qo = load_halves(q_base, tok, N, sqn, sqd, d, BLOCK_N, PB, MASK_N, SPLIT)
    gx = load_tile(g_base, tok, N, sgn, sgd, d, 2 * PB, MASK_N).to(tl.float32)  # (BLOCK_N, DB)
    qp_e, qp_o, rq_e, rq_o, ce, se, co, so, num, inv_den = out_tile(
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
    )
    gn = gx * inv_den[:, None]  # (BLOCK_N, DB)
    dden = -tl.sum(gn * num, 1) * inv_den  # (BLOCK_N,)
    dkv_e += mm(tl.trans(rq_e), gn, DOT_DTYPE)  # (PB, DB)
    dkv_o += mm(tl.trans(rq_o), gn, DOT_DTYPE)
    dks_e += tl.sum(qp_e * dden[:, None], 0)  # (PB,)
    dks_o += tl.sum(qp_o * dden[:, None], 0)
    return dkv_e, dkv_o, dks_e, dks_o


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps"])
def _dstate_kernel(
    Q,
    G,
    WS,
    DWS,
    ANGLE,
    SIN,
    COS,
    N,
    W,
    d,
    n_heads,
    bps,
    eps,
    sqb,
    sqh,
    sqn,
    sqd,
    sgb,
    sgh,
    sgn,
    sgd,
    srn,
    srd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """B1: dKV_s = sum_n R(qp_n) gn_n^T (d, d) and dksum_s = sum_n dden_n qp_n over split s's tokens."""
    DB: tl.constexpr = 2 * PB
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    _dkv, _dks, _t, DKV_P, DKS_P, _dqb = dws_ptrs(DWS, tl.num_programs(0), tl.num_programs(1), d)
    q_base = Q + (bh // n_heads).to(tl.int64) * sqb + (bh % n_heads).to(tl.int64) * sqh
    g_base = G + (bh // n_heads).to(tl.int64) * sgb + (bh % n_heads).to(tl.int64) * sgh
    kv_e, kv_o = load_rows_halves(KV + bh * d * d, d, 0, PB, DB)
    kv_e = kv_e.to(DOT_DTYPE)
    kv_o = kv_o.to(DOT_DTYPE)
    ks_e, ks_o = load_vec_halves(KS + bh * d, d, PB)
    dkv_e = tl.zeros((PB, DB), dtype=tl.float32)
    dkv_o = tl.zeros((PB, DB), dtype=tl.float32)
    dks_e = tl.zeros((PB,), dtype=tl.float32)
    dks_o = tl.zeros((PB,), dtype=tl.float32)
    b0, b_main, has_tail = block_range(N, bps, BLOCK_N, SPLIT)
    for blk in range(b0, b_main):
        dkv_e, dkv_o, dks_e, dks_o = _dstate_block(
            dkv_e,
            dkv_o,
            dks_e,
            dks_o,
            q_base,
            g_base,
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
            sgn,
            sgd,
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
            dkv_e, dkv_o, dks_e, dks_o = _dstate_block(
                dkv_e,
                dkv_o,
                dks_e,
                dks_o,
                q_base,
                g_base,
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
                sgn,
                sgd,
                BLOCK_N,
                PB,
                ROPE_FROM_MEM,
                FAST,
                DOT_DTYPE,
                True,
                SPLIT,
            )
    part = bh * tl.num_programs(1) + sp
    store_rows_halves(DKV_P + part * d * d, dkv_e, dkv_o, d, 0, PB, DB)
    store_vec_halves(DKS_P + part * d, dks_e, dks_o, d, PB)


@triton.jit
def _dkv_values(
    dv_base,
    v_base,
    dkv_e,
    dkv_o,
    rk_e,
    rk_o,
    alpha,
    tok,
    N,
    d,
    c0,
    svn,
    svd,
    sdvn,
    sdvd,
    VB: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
):
    """Value columns [c0, c0 + VB) of dv_m = alpha_m dKV^T rk_m (stored), and their share of u_m = dKV v_m
    (rotated channels, as halves); dkv_e, dkv_o: dKV's columns [c0, c0 + VB), (PB, VB) each."""
    vx = load_tile(v_base + c0 * svd, tok, N, svn, svd, d - c0, VB, MASK_N)  # (BLOCK_N, VB)
    dv = (mm(rk_e, dkv_e, DOT_DTYPE) + mm(rk_o, dkv_o, DOT_DTYPE)) * alpha[:, None]  # (BLOCK_N, VB)
    store_tile(dv_base + c0 * sdvd, dv, tok, N, sdvn, sdvd, d - c0, VB, MASK_N)
    return mm(vx, tl.trans(dkv_e), DOT_DTYPE), mm(vx, tl.trans(dkv_o), DOT_DTYPE)  # (BLOCK_N, PB) each


@triton.jit
def _dkv_column_step(
    u_e,
    u_o,
    dv_base,
    v_base,
    dkv_bh,
    rk_e,
    rk_o,
    alpha,
    tok,
    N,
    d,
    c0,
    svn,
    svd,
    sdvn,
    sdvd,
    PB: tl.constexpr,
    VB: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
):
    """One step of the column loop: dKV's value columns [c0, c0 + VB) read from the workspace, then
    `_dkv_values`; returns u + this step's share."""
    ce_kv, co_kv = load_rows_halves(dkv_bh, d, c0, PB, VB)
    ue_c, uo_c = _dkv_values(
        dv_base,
        v_base,
        ce_kv.to(DOT_DTYPE),
        co_kv.to(DOT_DTYPE),
        rk_e,
        rk_o,
        alpha,
        tok,
        N,
        d,
        c0,
        svn,
        svd,
        sdvn,
        sdvd,
        VB,
        DOT_DTYPE,
        MASK_N,
    )
    return u_e + ue_c, u_o + uo_c


@triton.jit
def _dkv_block(
    dqb_e,
    dqb_o,
    k_base,
    v_base,
    dk_base,
    dv_base,
    tok,
    N,
    W,
    d,
    scale,
    qbar_e,
    qbar_o,
    m_fin,
    inv_l,
    t_all,
    dkv_e,
    dkv_o,
    dkv_bh,
    dks_e,
    dks_o,
    ANGLE,
    SIN,
    COS,
    srn,
    srd,
    skn,
    skd,
    svn,
    svd,
    sdkn,
    sdkd,
    sdvn,
    sdvd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    VB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    ke, ko = load_halves(k_base, tok, N, skn, skd, d, BLOCK_N, PB, MASK_N, SPLIT)
    kp_e, kp_o = phi_halves(ke, ko, tok, N, d, PB, MASK_N)  # (BLOCK_N, PB)
    alpha = tl.exp(scale * dot_halves(kp_e, kp_o, qbar_e, qbar_o) - m_fin) * inv_l  # (BLOCK_N,)
    if MASK_N:
        alpha = tl.where(tok < N, alpha, 0.0)
    ce, se, co, so = rope_cs(tok, N, W, d, ANGLE, SIN, COS, srn, srd, BLOCK_N, PB, ROPE_FROM_MEM, FAST, MASK_N, SPLIT)
    rk_e, rk_o = rotate(kp_e, kp_o, ce, se, co, so)
    # dv = alpha dKV^T rk and u = dKV v (rotated channels, as halves)
    if VB == 2 * PB:  # dKV held in registers (dkv_e, dkv_o)
        u_e, u_o = _dkv_values(
            dv_base, v_base, dkv_e, dkv_o, rk_e, rk_o, alpha, tok, N, d, 0, svn, svd, sdvn, sdvd, VB, DOT_DTYPE, MASK_N
        )
    else:  # dKV's value columns VB at a time, read from the workspace (L1/L2) in each token block
        u_e = tl.zeros((BLOCK_N, PB), dtype=tl.float32)
        u_o = tl.zeros((BLOCK_N, PB), dtype=tl.float32)
        if RANGE_DISABLE_LICM:  # the loads stay in the loop (hoisted, they would be the registers saved)
            for c in tl.range(0, 2 * PB // VB, num_stages=1, disable_licm=True):
                u_e, u_o = _dkv_column_step(
                    u_e,
                    u_o,
                    dv_base,
                    v_base,
                    dkv_bh,
                    rk_e,
                    rk_o,
                    alpha,
                    tok,
                    N,
                    d,
                    c * VB,
                    svn,
                    svd,
                    sdvn,
                    sdvd,
                    PB,
                    VB,
                    DOT_DTYPE,
                    MASK_N,
                )
        else:  # triton < 3.5: no disable_licm
            for c in tl.range(0, 2 * PB // VB, num_stages=1):
                u_e, u_o = _dkv_column_step(
                    u_e,
                    u_o,
                    dv_base,
                    v_base,
                    dkv_bh,
                    rk_e,
                    rk_o,
                    alpha,
                    tok,
                    N,
                    d,
                    c * VB,
                    svn,
                    svd,
                    sdvn,
                    sdvd,
                    PB,
                    VB,
                    DOT_DTYPE,
                    MASK_N,
                )
    t_blk = tl.sum(rk_e * u_e, 1) + tl.sum(rk_o * u_o, 1) + dot_halves(kp_e, kp_o, dks_e, dks_o)
    ds = alpha * (t_blk - t_all)  # (BLOCK_N,)
    g_e, g_o = rotate_t(u_e, u_o, ce, se, co, so)  # R^T(dKV v)
    sds = (scale * ds)[:, None]
    dk_e = ((g_e + dks_e[None, :]) * alpha[:, None] + sds * qbar_e[None, :]) * dphi(ke)
    dk_o = ((g_o + dks_o[None, :]) * alpha[:, None] + sds * qbar_o[None, :]) * dphi(ko)
    store_halves(dk_base, dk_e, dk_o, tok, N, sdkn, sdkd, d, BLOCK_N, PB, MASK_N, SPLIT)
    dqb_e += tl.sum(kp_e * ds[:, None], 0)
    dqb_o += tl.sum(kp_o * ds[:, None], 0)
    return dqb_e, dqb_o


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps"])
def _dkv_kernel(
    K,
    V,
    DK,
    DV,
    WS,
    DWS,
    ANGLE,
    SIN,
    COS,
    N,
    W,
    d,
    n_heads,
    bps,
    scale,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sdkb,
    sdkh,
    sdkn,
    sdkd,
    sdvb,
    sdvh,
    sdvn,
    sdvd,
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
    """B2: dk, dv for split s's tokens and dqbar_s = c sum_m ds_m kp_m. VB (`LaunchPlan.vb`): dKV's value
    columns per step; the whole d-block: dKV stays in registers, fewer: read VB columns at a time in
    every token block (fp32 at d-block 128, where the register-resident dKV spills)."""
    DB: tl.constexpr = 2 * PB
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    QBAR, _kv, _ks, ML, _part = state_ptrs(WS, tl.num_programs(0), d)
    DKV, DKS, T, _dkv_p, _dks_p, DQB_P = dws_ptrs(DWS, tl.num_programs(0), tl.num_programs(1), d)
    b64 = (bh // n_heads).to(tl.int64)
    h64 = (bh % n_heads).to(tl.int64)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    dk_base = DK + b64 * sdkb + h64 * sdkh
    dv_base = DV + b64 * sdvb + h64 * sdvh
    qbar_e, qbar_o = load_vec_halves(QBAR + bh * d, d, PB)  # (PB,) each
    m_fin = tl.load(ML + bh * 2)
    inv_l = 1.0 / tl.load(ML + bh * 2 + 1)
    t_all = tl.load(T + bh)
    dkv_bh = DKV + bh * d * d
    if VB == DB:
        dkv_e, dkv_o = load_rows_halves(dkv_bh, d, 0, PB, DB)  # (PB, DB) each
        dkv_e = dkv_e.to(DOT_DTYPE)
        dkv_o = dkv_o.to(DOT_DTYPE)
    else:  # read in the token loop
        dkv_e = 0.0
        dkv_o = 0.0
    dks_e, dks_o = load_vec_halves(DKS + bh * d, d, PB)
    dqb_e = tl.zeros((PB,), dtype=tl.float32)
    dqb_o = tl.zeros((PB,), dtype=tl.float32)
    b0, b_main, has_tail = block_range(N, bps, BLOCK_N, SPLIT)
    for blk in range(b0, b_main):
        dqb_e, dqb_o = _dkv_block(
            dqb_e,
            dqb_o,
            k_base,
            v_base,
            dk_base,
            dv_base,
            blk * BLOCK_N + tl.arange(0, BLOCK_N),
            N,
            W,
            d,
            scale,
            qbar_e,
            qbar_o,
            m_fin,
            inv_l,
            t_all,
            dkv_e,
            dkv_o,
            dkv_bh,
            dks_e,
            dks_o,
            ANGLE,
            SIN,
            COS,
            srn,
            srd,
            skn,
            skd,
            svn,
            svd,
            sdkn,
            sdkd,
            sdvn,
            sdvd,
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
            dqb_e, dqb_o = _dkv_block(
                dqb_e,
                dqb_o,
                k_base,
                v_base,
                dk_base,
                dv_base,
                b_main * BLOCK_N + tl.arange(0, BLOCK_N),
                N,
                W,
                d,
                scale,
                qbar_e,
                qbar_o,
                m_fin,
                inv_l,
                t_all,
                dkv_e,
                dkv_o,
                dkv_bh,
                dks_e,
                dks_o,
                ANGLE,
                SIN,
                COS,
                srn,
                srd,
                skn,
                skd,
                svn,
                svd,
                sdkn,
                sdkd,
                sdvn,
                sdvd,
                BLOCK_N,
                PB,
                VB,
                ROPE_FROM_MEM,
                FAST,
                DOT_DTYPE,
                True,
                SPLIT,
            )
    store_vec_halves(DQB_P + (bh * tl.num_programs(1) + sp) * d, scale * dqb_e, scale * dqb_o, d, PB)


@triton.jit
def _dq_block(
    q_base,
    g_base,
    dq_base,
    tok,
    N,
    W,
    d,
    kv_e,
    kv_o,
    ks_e,
    ks_o,
    dqb_e,
    dqb_o,
    ANGLE,
    SIN,
    COS,
    srn,
    srd,
    eps,
    sqn,
    sqd,
    sgn,
    sgd,
    sdqn,
    sdqd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    MASK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    qe, qo = load_halves(q_base, tok, N, sqn, sqd, d, BLOCK_N, PB, MASK_N, SPLIT)
    gx = load_tile(g_base, tok, N, sgn, sgd, d, 2 * PB, MASK_N).to(tl.float32)
    _qpe, _qpo, _rqe, _rqo, ce, se, co, so, num, inv_den = out_tile(
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
    )
    gn = gx * inv_den[:, None]
    dden = -tl.sum(gn * num, 1) * inv_den
    w_e = mm(gn, tl.trans(kv_e), DOT_DTYPE)  # (BLOCK_N, PB): KV gn on the even rows
    w_o = mm(gn, tl.trans(kv_o), DOT_DTYPE)
    r_e, r_o = rotate_t(w_e, w_o, ce, se, co, so)
    dq_e = (r_e + dden[:, None] * ks_e[None, :] + dqb_e[None, :]) * dphi(qe)
    dq_o = (r_o + dden[:, None] * ks_o[None, :] + dqb_o[None, :]) * dphi(qo)
    store_halves(dq_base, dq_e, dq_o, tok, N, sdqn, sdqd, d, BLOCK_N, PB, MASK_N, SPLIT)


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps"])
def _dq_kernel(
    Q,
    G,
    DQ,
    WS,
    DWS,
    ANGLE,
    SIN,
    COS,
    N,
    W,
    d,
    n_heads,
    bps,
    eps,
    inv_n,
    sqb,
    sqh,
    sqn,
    sqd,
    sgb,
    sgh,
    sgn,
    sgd,
    sdqb,
    sdqh,
    sdqn,
    sdqd,
    srn,
    srd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """B3: dq_n = (R^T(KV gn_n) + dden_n ksum + dqbar / N) * phi'(q_n) for split s's tokens."""
    DB: tl.constexpr = 2 * PB
    bh = tl.program_id(0)
    n_splits = tl.num_programs(1)
    b64 = (bh // n_heads).to(tl.int64)
    h64 = (bh % n_heads).to(tl.int64)
    q_base = Q + b64 * sqb + h64 * sqh
    g_base = G + b64 * sgb + h64 * sgh
    dq_base = DQ + b64 * sdqb + h64 * sdqh
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    _dkv, _dks, _t, _dkv_p, _dks_p, DQB_P = dws_ptrs(DWS, tl.num_programs(0), n_splits, d)
    kv_e, kv_o = load_rows_halves(KV + bh * d * d, d, 0, PB, DB)
    kv_e = kv_e.to(DOT_DTYPE)
    kv_o = kv_o.to(DOT_DTYPE)
    ks_e, ks_o = load_vec_halves(KS + bh * d, d, PB)
    dqb_e = tl.zeros((PB,), dtype=tl.float32)
    dqb_o = tl.zeros((PB,), dtype=tl.float32)
    for s in range(0, n_splits):  # fixed order: deterministic
        pe, po = load_vec_halves(DQB_P + (bh * n_splits + s) * d, d, PB)
        dqb_e += pe
        dqb_o += po
    dqb_e = dqb_e * inv_n
    dqb_o = dqb_o * inv_n
    b0, b_main, has_tail = block_range(N, bps, BLOCK_N, SPLIT)
    for blk in range(b0, b_main):
        _dq_block(
            q_base,
            g_base,
            dq_base,
            blk * BLOCK_N + tl.arange(0, BLOCK_N),
            N,
            W,
            d,
            kv_e,
            kv_o,
            ks_e,
            ks_o,
            dqb_e,
            dqb_o,
            ANGLE,
            SIN,
            COS,
            srn,
            srd,
            eps,
            sqn,
            sqd,
            sgn,
            sgd,
            sdqn,
            sdqd,
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
            _dq_block(
                q_base,
                g_base,
                dq_base,
                b_main * BLOCK_N + tl.arange(0, BLOCK_N),
                N,
                W,
                d,
                kv_e,
                kv_o,
                ks_e,
                ks_o,
                dqb_e,
                dqb_o,
                ANGLE,
                SIN,
                COS,
                srn,
                srd,
                eps,
                sqn,
                sqd,
                sgn,
                sgd,
                sdqn,
                sdqd,
                BLOCK_N,
                PB,
                ROPE_FROM_MEM,
                FAST,
                DOT_DTYPE,
                True,
                SPLIT,
            )


def rala_backward(g, q, k, v, grid, rope, ws, *, plan=None, compiled=None):
    """Gradients (dq, dk, dv) of sum(out * g); `ws` = the forward's workspace (its small state).
    compiled: plan as for compiled kernels (True) or the interpreter (False); None: as this process runs."""
    b, h, n, d = q.shape
    bh, dev = b * h, q.device
    if token_major(q) and backward_wants_channel_major(n, d, q.dtype, compiled=compiled):
        g, q, k, v = (t.contiguous() for t in (g, q, k, v))  # dq, dk, dv then come back contiguous
    split = token_major(q)  # after the copy: the layout the kernels read
    plan = plan or plan_launch(bh, n, d, q.dtype, dev, backward=True, token_major=split)
    angle, sin, cos, srn, srd, from_mem = rope_args(rope, n, d, dev, token_major=split)
    meta = stream_meta(plan, from_mem, q.dtype, split)
    s, nw, w = plan.splits, plan.num_warps, grid[1]
    dws = torch.empty(dworkspace_size(bh, s, d), dtype=torch.float32, device=dev)
    dq, dk, dv = empty_like_layout(q), empty_like_layout(k), empty_like_layout(v)
    meta_b1 = dict(meta, num_warps=plan.warps_b1 or plan.num_warps)
    _dstate_kernel[(bh, s)](
        q, g, ws, dws, angle, sin, cos, n, w, d, h, plan.bps, EPS, *q.stride(), *g.stride(), srn, srd, **meta_b1
    )
    if s <= FUSE_MERGE_MAX_SPLITS:  # few splits: one program per (b, h) sums them and T
        _dmerge_kernel[(bh,)](ws, dws, s, d, DB=2 * plan.pb, RB=min(2 * plan.pb, 32), num_warps=nw)
    else:  # many: in parallel over chunks of dKV, then T from the chunks' shares
        chunks = merge_chunks(d) + 1
        _dmerge_chunks_kernel[(bh, chunks)](ws, dws, s, d, SB=MERGE_SPLITS_BLOCK, CW=MERGE_CHUNK, num_warps=MERGE_WARPS)
        _dtotal_kernel[(bh,)](dws, s, chunks, d, SB=MERGE_SPLITS_BLOCK, num_warps=MERGE_WARPS)
    _dkv_kernel[(bh, s)](
        k,
        v,
        dk,
        dv,
        ws,
        dws,
        angle,
        sin,
        cos,
        n,
        w,
        d,
        h,
        plan.bps,
        d**-0.5,
        *k.stride(),
        *v.stride(),
        *dk.stride(),
        *dv.stride(),
        srn,
        srd,
        VB=plan.vb,
        **meta,
    )
    _dq_kernel[(bh, s)](
        q,
        g,
        dq,
        ws,
        dws,
        angle,
        sin,
        cos,
        n,
        w,
        d,
        h,
        plan.bps,
        EPS,
        1.0 / n,
        *q.stride(),
        *g.stride(),
        *dq.stride(),
        srn,
        srd,
        **meta,
    )
    return dq, dk, dv
