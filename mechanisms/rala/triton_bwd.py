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

Passes (grid (B*h, S) like the forward, then one merge program per (b, h)):
  B1 `_dstate_kernel`:  over q, g: recompute num, den; partial dKV, dksum per split
  `_dmerge_kernel`:     sum the partials in a fixed order (deterministic); T
  B2 `_dkv_kernel`:     over k, v: recompute alpha, rk; write dk, dv; partial dqbar per split
  B3 `_dq_kernel`:      over q, g: recompute num, den; dq (needs dqbar from every split of B2)
Extra memory: one fp32 workspace of O(B h S d^2) (dKV, dksum, T and the split partials); HBM
traffic: q and g read twice, k and v once, dq, dk, dv written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mechanisms.rala.triton_kernels import (
    EPS,
    halves,
    load_rows_halves,
    mm,
    out_tile,
    phi,
    rope_cs,
    rotate,
    state_ptrs,
    store_rows_halves,
    stream_meta,
)
from mechanisms.rala.triton_op import empty_like_layout, plan_launch, rope_args


@triton.jit
def dphi(x):
    """d phi / dx: 1 for x > 0, exp(x) otherwise."""
    return tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))


@triton.jit
def interleave(xe, xo, BLOCK_N: tl.constexpr, PB: tl.constexpr):
    """Inverse of `halves`: (BLOCK_N, PB) x2 -> (BLOCK_N, 2*PB)."""
    return tl.reshape(tl.join(xe, xo), (BLOCK_N, 2 * PB))


@triton.jit
def rotate_t(ye, yo, ce, se, co, so):
    """R^T(y) on halves (the transpose of `rotate`, = rotation by -theta for shared angles)."""
    return ye * ce + yo * so, yo * co - ye * se


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


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps"])
def _dstate_kernel(
    Q, G, WS, DWS, ANGLE, SIN, COS,
    N, W, d, n_heads, bps, eps,
    sqb, sqh, sqn, sqd, sgb, sgh, sgn, sgd, srn, srd,
    BLOCK_N: tl.constexpr, PB: tl.constexpr, ROPE_FROM_MEM: tl.constexpr, FAST: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """B1: dKV_s = sum_n R(qp_n) gn_n^T (d, d) and dksum_s = sum_n dden_n qp_n over split s's tokens."""
    DB: tl.constexpr = 2 * PB
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    _dkv, _dks, _t, DKV_P, DKS_P, _dqb = dws_ptrs(DWS, tl.num_programs(0), tl.num_programs(1), d)
    q_base = Q + (bh // n_heads).to(tl.int64) * sqb + (bh % n_heads).to(tl.int64) * sqh
    g_base = G + (bh // n_heads).to(tl.int64) * sgb + (bh % n_heads).to(tl.int64) * sgh
    ch = tl.arange(0, DB)
    kv_e, kv_o = load_rows_halves(KV + bh * d * d, d, PB, DB)
    kv_e = kv_e.to(DOT_DTYPE)
    kv_o = kv_o.to(DOT_DTYPE)
    ks = tl.load(KS + bh * d + ch, mask=ch < d, other=0.0)
    dkv_e = tl.zeros((PB, DB), dtype=tl.float32)
    dkv_o = tl.zeros((PB, DB), dtype=tl.float32)
    dks = tl.zeros((DB,), dtype=tl.float32)
    for blk in range(sp * bps, tl.minimum(sp * bps + bps, tl.cdiv(N, BLOCK_N))):
        tok = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        tok_mask = tok < N
        msk = tok_mask[:, None] & (ch < d)[None, :]
        qx = tl.load(q_base + tok[:, None] * sqn + ch[None, :] * sqd, mask=msk, other=0.0).to(tl.float32)
        gx = tl.load(g_base + tok[:, None] * sgn + ch[None, :] * sgd, mask=msk, other=0.0).to(tl.float32)
        qp, rq_e, rq_o, ce, se, co, so, num, den = out_tile(
            qx, msk, tok, tok_mask, kv_e, kv_o, ks, W, d, ANGLE, SIN, COS, srn, srd, eps,
            BLOCK_N, PB, ROPE_FROM_MEM, FAST, DOT_DTYPE)
        gn = gx / den[:, None]  # (BLOCK_N, DB)
        dden = -tl.sum(gn * num, 1) / den  # (BLOCK_N,)
        dkv_e += mm(tl.trans(rq_e), gn, DOT_DTYPE)  # (PB, DB)
        dkv_o += mm(tl.trans(rq_o), gn, DOT_DTYPE)
        dks += tl.sum(qp * dden[:, None], 0)
    part = bh * tl.num_programs(1) + sp
    store_rows_halves(DKV_P + part * d * d, dkv_e, dkv_o, d, PB, DB)
    tl.store(DKS_P + part * d + ch, dks, mask=ch < d)


@triton.jit(do_not_specialize=["n_splits"])
def _dmerge_kernel(WS, DWS, n_splits, d, DB: tl.constexpr):
    """dKV, dksum = sums of the split partials (fixed order); T = <KV, dKV>_F + ksum . dksum."""
    bh = tl.program_id(0)
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    DKV, DKS, T, DKV_P, DKS_P, _dqb = dws_ptrs(DWS, tl.num_programs(0), n_splits, d)
    row = tl.arange(0, DB)
    msk2 = (row < d)[:, None] & (row < d)[None, :]
    off2 = row[:, None] * d + row[None, :]
    dkv = tl.zeros((DB, DB), dtype=tl.float32)
    dks = tl.zeros((DB,), dtype=tl.float32)
    for s in range(0, n_splits):
        part = bh * n_splits + s
        dkv += tl.load(DKV_P + part * d * d + off2, mask=msk2, other=0.0)
        dks += tl.load(DKS_P + part * d + row, mask=row < d, other=0.0)
    kv = tl.load(KV + bh * d * d + off2, mask=msk2, other=0.0)
    ks = tl.load(KS + bh * d + row, mask=row < d, other=0.0)
    tl.store(DKV + bh * d * d + off2, dkv, mask=msk2)
    tl.store(DKS + bh * d + row, dks, mask=row < d)
    tl.store(T + bh, tl.sum(tl.sum(kv * dkv, 1), 0) + tl.sum(ks * dks, 0))


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps"])
def _dkv_kernel(
    K, V, DK, DV, WS, DWS, ANGLE, SIN, COS,
    N, W, d, n_heads, bps, scale,
    skb, skh, skn, skd, svb, svh, svn, svd, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, srn, srd,
    BLOCK_N: tl.constexpr, PB: tl.constexpr, ROPE_FROM_MEM: tl.constexpr, FAST: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """B2: dk, dv for split s's tokens and dqbar_s = c sum_m ds_m kp_m."""
    DB: tl.constexpr = 2 * PB
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    QBAR, _kv, _ks, ML, _part = state_ptrs(WS, tl.num_programs(0), d)
    DKV, DKS, T, _dkv_p, _dks_p, DQB_P = dws_ptrs(DWS, tl.num_programs(0), tl.num_programs(1), d)
    b64 = (bh // n_heads).to(tl.int64)
    h64 = (bh % n_heads).to(tl.int64)
    ch = tl.arange(0, DB)
    qbar = tl.load(QBAR + bh * d + ch, mask=ch < d, other=0.0)  # (DB,)
    m_fin = tl.load(ML + bh * 2)
    l_fin = tl.load(ML + bh * 2 + 1)
    t_all = tl.load(T + bh)
    dkv_e, dkv_o = load_rows_halves(DKV + bh * d * d, d, PB, DB)  # (PB, DB) each
    dkv_e = dkv_e.to(DOT_DTYPE)
    dkv_o = dkv_o.to(DOT_DTYPE)
    dks = tl.load(DKS + bh * d + ch, mask=ch < d, other=0.0)  # (DB,)
    dqb = tl.zeros((DB,), dtype=tl.float32)
    for blk in range(sp * bps, tl.minimum(sp * bps + bps, tl.cdiv(N, BLOCK_N))):
        tok = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        tok_mask = tok < N
        msk = tok_mask[:, None] & (ch < d)[None, :]
        kx = tl.load(K + b64 * skb + h64 * skh + tok[:, None] * skn + ch[None, :] * skd,
                     mask=msk, other=0.0).to(tl.float32)
        vx = tl.load(V + b64 * svb + h64 * svh + tok[:, None] * svn + ch[None, :] * svd, mask=msk, other=0.0)
        kp = tl.where(msk, phi(kx), 0.0)  # (BLOCK_N, DB)
        s_blk = scale * tl.sum(kp * qbar[None, :], 1)
        alpha = tl.where(tok_mask, tl.exp(s_blk - m_fin) / l_fin, 0.0)  # (BLOCK_N,)
        ce, se, co, so = rope_cs(tok, tok_mask, W, d, ANGLE, SIN, COS, srn, srd, BLOCK_N, PB, ROPE_FROM_MEM, FAST)
        kp_e, kp_o = halves(kp, BLOCK_N, PB)
        rk_e, rk_o = rotate(kp_e, kp_o, ce, se, co, so)
        # dv_m = alpha_m dKV^T rk_m
        dv = (mm(rk_e, dkv_e, DOT_DTYPE) + mm(rk_o, dkv_o, DOT_DTYPE)) * alpha[:, None]  # (BLOCK_N, DB)
        tl.store(DV + b64 * sdvb + h64 * sdvh + tok[:, None] * sdvn + ch[None, :] * sdvd,
                 dv.to(DV.dtype.element_ty), mask=msk)
        # u_m = dKV v_m (rotated channels, as halves)
        u_e = mm(vx, tl.trans(dkv_e), DOT_DTYPE)  # (BLOCK_N, PB)
        u_o = mm(vx, tl.trans(dkv_o), DOT_DTYPE)
        t_blk = tl.sum(rk_e * u_e, 1) + tl.sum(rk_o * u_o, 1) + tl.sum(kp * dks[None, :], 1)
        ds = alpha * (t_blk - t_all)  # (BLOCK_N,)
        g_e, g_o = rotate_t(u_e, u_o, ce, se, co, so)  # R^T(dKV v)
        dkp = (interleave(g_e, g_o, BLOCK_N, PB) + dks[None, :]) * alpha[:, None]
        dkp += (scale * ds)[:, None] * qbar[None, :]
        dk = dkp * dphi(kx)
        tl.store(DK + b64 * sdkb + h64 * sdkh + tok[:, None] * sdkn + ch[None, :] * sdkd,
                 dk.to(DK.dtype.element_ty), mask=msk)
        dqb += tl.sum(kp * ds[:, None], 0)
    tl.store(DQB_P + (bh * tl.num_programs(1) + sp) * d + ch, scale * dqb, mask=ch < d)


@triton.jit(do_not_specialize=["N", "W", "n_heads", "bps"])
def _dq_kernel(
    Q, G, DQ, WS, DWS, ANGLE, SIN, COS,
    N, W, d, n_heads, bps, eps, inv_n,
    sqb, sqh, sqn, sqd, sgb, sgh, sgn, sgd, sdqb, sdqh, sdqn, sdqd, srn, srd,
    BLOCK_N: tl.constexpr, PB: tl.constexpr, ROPE_FROM_MEM: tl.constexpr, FAST: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """B3: dq_n = (R^T(KV gn_n) + dden_n ksum + dqbar / N) * phi'(q_n) for split s's tokens."""
    DB: tl.constexpr = 2 * PB
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    n_splits = tl.num_programs(1)
    b64 = (bh // n_heads).to(tl.int64)
    h64 = (bh % n_heads).to(tl.int64)
    _qbar, KV, KS, _ml, _part = state_ptrs(WS, tl.num_programs(0), d)
    _dkv, _dks, _t, _dkv_p, _dks_p, DQB_P = dws_ptrs(DWS, tl.num_programs(0), n_splits, d)
    ch = tl.arange(0, DB)
    kv_e, kv_o = load_rows_halves(KV + bh * d * d, d, PB, DB)
    kv_e = kv_e.to(DOT_DTYPE)
    kv_o = kv_o.to(DOT_DTYPE)
    ks = tl.load(KS + bh * d + ch, mask=ch < d, other=0.0)
    dqb = tl.zeros((DB,), dtype=tl.float32)
    for s in range(0, n_splits):  # fixed order: deterministic
        dqb += tl.load(DQB_P + (bh * n_splits + s) * d + ch, mask=ch < d, other=0.0)
    dqb = dqb * inv_n
    for blk in range(sp * bps, tl.minimum(sp * bps + bps, tl.cdiv(N, BLOCK_N))):
        tok = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        tok_mask = tok < N
        msk = tok_mask[:, None] & (ch < d)[None, :]
        qx = tl.load(Q + b64 * sqb + h64 * sqh + tok[:, None] * sqn + ch[None, :] * sqd,
                     mask=msk, other=0.0).to(tl.float32)
        gx = tl.load(G + b64 * sgb + h64 * sgh + tok[:, None] * sgn + ch[None, :] * sgd,
                     mask=msk, other=0.0).to(tl.float32)
        qp, rq_e, rq_o, ce, se, co, so, num, den = out_tile(
            qx, msk, tok, tok_mask, kv_e, kv_o, ks, W, d, ANGLE, SIN, COS, srn, srd, eps,
            BLOCK_N, PB, ROPE_FROM_MEM, FAST, DOT_DTYPE)
        gn = gx / den[:, None]
        dden = -tl.sum(gn * num, 1) / den
        w_e = mm(gn, tl.trans(kv_e), DOT_DTYPE)  # (BLOCK_N, PB): KV gn on the even rows
        w_o = mm(gn, tl.trans(kv_o), DOT_DTYPE)
        r_e, r_o = rotate_t(w_e, w_o, ce, se, co, so)
        dqp = interleave(r_e, r_o, BLOCK_N, PB) + dden[:, None] * ks[None, :] + dqb[None, :]
        dq = dqp * dphi(qx)
        tl.store(DQ + b64 * sdqb + h64 * sdqh + tok[:, None] * sdqn + ch[None, :] * sdqd,
                 dq.to(DQ.dtype.element_ty), mask=msk)


def rala_backward(g, q, k, v, grid, rope, ws, *, plan=None):
    """Gradients (dq, dk, dv) of sum(out * g); `ws` = the forward's workspace (its small state)."""
    b, h, n, d = q.shape
    bh, dev = b * h, q.device
    plan = plan or plan_launch(bh, n, d, q.dtype, dev, backward=True)
    angle, sin, cos, srn, srd, from_mem = rope_args(rope, n, d, dev)
    meta = stream_meta(plan, from_mem, q.dtype)
    s, nw, w = plan.splits, plan.num_warps, grid[1]
    dws = torch.empty(bh * (d * d + d + 1) + bh * s * (d * d + 2 * d), dtype=torch.float32, device=dev)
    dq, dk, dv = empty_like_layout(q), empty_like_layout(k), empty_like_layout(v)
    _dstate_kernel[(bh, s)](q, g, ws, dws, angle, sin, cos, n, w, d, h, plan.bps, EPS,
                            *q.stride(), *g.stride(), srn, srd, **meta)
    _dmerge_kernel[(bh,)](ws, dws, s, d, DB=2 * plan.pb, num_warps=nw)
    _dkv_kernel[(bh, s)](k, v, dk, dv, ws, dws, angle, sin, cos, n, w, d, h, plan.bps, d**-0.5,
                         *k.stride(), *v.stride(), *dk.stride(), *dv.stride(), srn, srd, **meta)
    _dq_kernel[(bh, s)](q, g, dq, ws, dws, angle, sin, cos, n, w, d, h, plan.bps, EPS, 1.0 / n,
                        *q.stride(), *g.stride(), *dq.stride(), srn, srd, **meta)
    return dq, dk, dv
