"""Device functions shared by the RALA forward (triton_kernels.py) and backward (triton_bwd.py) kernels:
the feature map, fp32-accumulating dots, the even/odd channel "halves" and their loads and stores, RoPE
angles and rotation, workspace pointers, the merge of split states, token-block ranges. See
triton_kernels.py for the layout and precision rules they implement. Imports triton: imported only with
the kernels, on first use."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def phi(x):
    """ELU(x) + 1, fp32: x + 1 for x > 0, exp(x) otherwise."""
    return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))


@triton.jit
def mm(a, b, DOT_DTYPE: tl.constexpr):
    """a @ b with fp32 accumulation; operands in DOT_DTYPE (fp32: exact IEEE products, no TF32)."""
    if DOT_DTYPE == tl.float32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE))
    return out


@triton.jit
def halves(x, BLOCK_N: tl.constexpr, PB: tl.constexpr):
    """(BLOCK_N, 2*PB) -> even channels (BLOCK_N, PB), odd channels (BLOCK_N, PB)."""
    return tl.split(tl.reshape(x, (BLOCK_N, PB, 2)))


@triton.jit
def sincos(theta, FAST: tl.constexpr):
    """(sin, cos) of fp32 theta. FAST (GPU): Cody-Waite reduction to [-pi, pi] with 2 pi split in
    an exact head 6.28125 and a tail, then the MUFU sin/cos.approx (abs error ~5e-7): 2 MUFU ops
    instead of ~40 FMA-pipe instructions of the accurate sinf + cosf, which at d = 64 would cost
    about as much as the memory traffic. Otherwise (interpreter): tl.sin / tl.cos."""
    if FAST:
        turns = tl.floor(theta * 0.15915494309189535 + 0.5)
        r = theta - turns * 6.28125
        r = r - turns * 1.9353071795864769e-3
        s = tl.inline_asm_elementwise("sin.approx.ftz.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)
        c = tl.inline_asm_elementwise("cos.approx.ftz.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)
    else:
        s = tl.sin(theta)
        c = tl.cos(theta)
    return s, c


@triton.jit
def interleave(xe, xo, BLOCK_N: tl.constexpr, PB: tl.constexpr):
    """Inverse of `halves`: (BLOCK_N, PB) x2 -> (BLOCK_N, 2*PB)."""
    return tl.reshape(tl.join(xe, xo), (BLOCK_N, 2 * PB))


@triton.jit
def tile_mask(tok, N, cols, ncols, MASK_N: tl.constexpr):
    """cols < ncols (padding of the d-block), and tok < N on the masked tail block only: the main
    loop's mask is constant along tokens, so token-contiguous tiles keep 16-byte accesses."""
    msk = (cols < ncols)[None, :]
    if MASK_N:
        msk = msk & (tok < N)[:, None]
    return msk


@triton.jit
def load_tile(base, tok, N, sn, sd, d, DB: tl.constexpr, MASK_N: tl.constexpr):
    """A (BLOCK_N, DB) tile of a (N, d) matrix with strides (sn, sd), zero padded."""
    ch = tl.arange(0, DB)
    return tl.load(base + tok[:, None] * sn + ch[None, :] * sd, mask=tile_mask(tok, N, ch, d, MASK_N), other=0.0)


@triton.jit
def store_tile(base, x, tok, N, sn, sd, d, DB: tl.constexpr, MASK_N: tl.constexpr):
    ch = tl.arange(0, DB)
    tl.store(
        base + tok[:, None] * sn + ch[None, :] * sd, x.to(base.dtype.element_ty), mask=tile_mask(tok, N, ch, d, MASK_N)
    )


@triton.jit
def load_halves(
    base, tok, N, sn, sd, d, BLOCK_N: tl.constexpr, PB: tl.constexpr, MASK_N: tl.constexpr, SPLIT: tl.constexpr
):
    """Even and odd channels of a (BLOCK_N, d) tile, each (BLOCK_N, PB) fp32, zero padded.

    SPLIT (token-contiguous memory, the mixer's layout): the even and odd channels are separate
    token-contiguous rows and are loaded as two tiles, so no tile changes its register layout;
    otherwise (channel-contiguous) one full-width load, split in registers."""
    if SPLIT:
        pair = tl.arange(0, PB)
        ptr = base + tok[:, None] * sn + (2 * pair)[None, :] * sd
        msk = tile_mask(tok, N, 2 * pair, d, MASK_N)
        xe = tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
        xo = tl.load(ptr + sd, mask=msk, other=0.0).to(tl.float32)
    else:
        xe, xo = halves(load_tile(base, tok, N, sn, sd, d, 2 * PB, MASK_N).to(tl.float32), BLOCK_N, PB)
    return xe, xo


@triton.jit
def store_halves(
    base, xe, xo, tok, N, sn, sd, d, BLOCK_N: tl.constexpr, PB: tl.constexpr, MASK_N: tl.constexpr, SPLIT: tl.constexpr
):
    """Inverse of `load_halves` (cast to the destination's dtype)."""
    if SPLIT:
        pair = tl.arange(0, PB)
        ptr = base + tok[:, None] * sn + (2 * pair)[None, :] * sd
        msk = tile_mask(tok, N, 2 * pair, d, MASK_N)
        tl.store(ptr, xe.to(base.dtype.element_ty), mask=msk)
        tl.store(ptr + sd, xo.to(base.dtype.element_ty), mask=msk)
    else:
        store_tile(base, interleave(xe, xo, BLOCK_N, PB), tok, N, sn, sd, d, 2 * PB, MASK_N)


@triton.jit
def phi_halves(xe, xo, tok, N, d, PB: tl.constexpr, MASK_N: tl.constexpr):
    """phi on both halves, 0 on padding (channels >= d and, on the tail, tokens >= N)."""
    msk = tile_mask(tok, N, 2 * tl.arange(0, PB), d, MASK_N)
    return tl.where(msk, phi(xe), 0.0), tl.where(msk, phi(xo), 0.0)


@triton.jit
def load_vec_halves(ptr, d, PB: tl.constexpr):
    """A (d,) fp32 vector as its even and odd entries, each (PB,), zero padded."""
    pair = tl.arange(0, PB)
    return (
        tl.load(ptr + 2 * pair, mask=2 * pair < d, other=0.0),
        tl.load(ptr + 2 * pair + 1, mask=2 * pair < d, other=0.0),
    )


@triton.jit
def store_vec_halves(ptr, xe, xo, d, PB: tl.constexpr):
    pair = tl.arange(0, PB)
    tl.store(ptr + 2 * pair, xe, mask=2 * pair < d)
    tl.store(ptr + 2 * pair + 1, xo, mask=2 * pair < d)


@triton.jit
def dot_halves(xe, xo, ye, yo):
    """Row-wise dot product of (BLOCK_N, PB) halves with (PB,) halves -> (BLOCK_N,)."""
    return tl.sum(xe * ye[None, :], 1) + tl.sum(xo * yo[None, :], 1)


@triton.jit
def rope_cs(
    tok,
    N,
    W,
    d,
    ANGLE,
    SIN,
    COS,
    stride_rn,
    stride_rd,
    BLOCK_N: tl.constexpr,
    PB: tl.constexpr,
    ROPE_FROM_MEM: tl.constexpr,
    FAST: tl.constexpr,
    MASK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """cos/sin of the even and odd channel of every pair: (ce, se, co, so), each (BLOCK_N, PB) fp32.

    In-kernel: pair i < d/4 rotates by row * angle[2i], pair i >= d/4 by col * angle[2i - d/2]
    (docs/rala.md "The 2D rotary embedding": the first d/2 channels use the row index); both channels of a
    pair share it.
    From tables: loaded in the inputs' memory order (the launcher hands token-major tables to
    token-major inputs).
    """
    if ROPE_FROM_MEM:
        ce, co = load_halves(COS, tok, N, stride_rn, stride_rd, d, BLOCK_N, PB, MASK_N, SPLIT)
        se, so = load_halves(SIN, tok, N, stride_rn, stride_rd, d, BLOCK_N, PB, MASK_N, SPLIT)
    else:
        pair = tl.arange(0, PB)
        is_row = 2 * pair < d // 2  # (PB,)
        ang = tl.load(ANGLE + tl.where(is_row, 2 * pair, 2 * pair - d // 2), mask=2 * pair < d, other=0.0)
        row = tok // W
        col = tok - row * W
        pos = tl.where(is_row[None, :], row[:, None], col[:, None]).to(tl.float32)  # (BLOCK_N, PB)
        se, ce = sincos(pos * ang[None, :], FAST)  # theta = pos * angle, one fp32 product as in the reference
        co = ce
        so = se
    return ce, se, co, so


@triton.jit
def rotate(xe, xo, ce, se, co, so):
    """R(x) on halves: pair (a, b) -> (a cos_a - b sin_a, b cos_b + a sin_b)."""
    return xe * ce - xo * se, xo * co + xe * so


@triton.jit
def load_rows_halves(ptr, d, c0, PB: tl.constexpr, CB: tl.constexpr):
    """Columns [c0, c0 + CB) of a row-major (d, d) fp32 matrix as its even and odd rows, each (PB, CB),
    zero padded (c0 = 0, CB = the d-block: the whole matrix)."""
    pair = tl.arange(0, PB)
    col = c0 + tl.arange(0, CB)
    off = (2 * pair)[:, None] * d + col[None, :]
    msk = (2 * pair < d)[:, None] & (col < d)[None, :]
    return tl.load(ptr + off, mask=msk, other=0.0), tl.load(ptr + off + d, mask=msk, other=0.0)


@triton.jit
def store_rows_halves(ptr, xe, xo, d, c0, PB: tl.constexpr, CB: tl.constexpr):
    """Inverse of `load_rows_halves`."""
    pair = tl.arange(0, PB)
    col = c0 + tl.arange(0, CB)
    off = (2 * pair)[:, None] * d + col[None, :]
    msk = (2 * pair < d)[:, None] & (col < d)[None, :]
    tl.store(ptr + off, xe, mask=msk)
    tl.store(ptr + off + d, xo, mask=msk)


@triton.jit
def state_ptrs(WS, BH, d):
    """The forward's workspace (one fp32 buffer, see `workspace_size`): small state, then partials.

    qbar (BH, d) | KV (BH, d, d) | ksum (BH, d) | ML (BH, 2) = final (max, sum) | partials ...
    """
    qbar = WS
    kv = qbar + BH * d
    ks = kv + BH * d * d
    ml = ks + BH * d
    return qbar, kv, ks, ml, ml + BH * 2


@triton.jit
def partial_ptrs(PART, BH, S, d):
    """Split partials: qsum (BH, S, d) | KV_s (BH, S, d, d) | ks_s (BH, S, d) | m_s (BH, S) | l_s (BH, S)."""
    qsum = PART
    kv_p = qsum + BH * S * d
    ks_p = kv_p + BH * S * d * d
    m_p = ks_p + BH * S * d
    return qsum, kv_p, ks_p, m_p, m_p + BH * S


@triton.jit
def merged_max_sum(M_P, L_P, n_splits, SB: tl.constexpr):
    """M = max_s m_s and L = sum_s exp(m_s - M) l_s over the n_splits (m_s, l_s) of one (b, h),
    read SB at a time in a fixed order (deterministic): the max/sum rescaling rule's scalars."""
    m_all = -float("inf")
    for s0 in range(0, n_splits, SB):
        s = s0 + tl.arange(0, SB)
        m_all = tl.maximum(m_all, tl.max(tl.load(M_P + s, mask=s < n_splits, other=-float("inf")), 0))
    l_all = 0.0
    for s0 in range(0, n_splits, SB):
        s = s0 + tl.arange(0, SB)
        w = tl.exp(tl.load(M_P + s, mask=s < n_splits, other=-float("inf")) - m_all)  # 0 past n_splits
        l_all += tl.sum(w * tl.load(L_P + s, mask=s < n_splits, other=0.0), 0)
    return m_all, l_all


@triton.jit
def sum_partials(P, rec, n_splits, col, M_P, m_all, WEIGHTED: tl.constexpr, SB: tl.constexpr, CW: tl.constexpr):
    """sum_s w_s P[s * rec + col + j] for j < CW: one flat chunk of the n_splits records of `rec`
    floats starting at P (columns >= rec read as 0). w_s = exp(m_s - M) (WEIGHTED: the forward's
    rescaling, m_s at M_P) or 1. Fixed order: blocks of SB splits in sequence, each reduced by
    tl.sum's fixed tree (deterministic, no atomics). Returns (CW,) fp32."""
    cols = col + tl.arange(0, CW)
    acc = tl.zeros((CW,), dtype=tl.float32)
    for s0 in range(0, n_splits, SB):
        s = s0 + tl.arange(0, SB)
        msk = (s < n_splits)[:, None] & (cols < rec)[None, :]
        tile = tl.load(P + s[:, None] * rec + cols[None, :], mask=msk, other=0.0)  # (SB, CW)
        if WEIGHTED:
            w = tl.exp(tl.load(M_P + s, mask=s < n_splits, other=-float("inf")) - m_all)  # (SB,)
            tile = tile * w[:, None]
        acc += tl.sum(tile, 0)
    return acc


@triton.jit
def merged_state(WS, bh, n_splits, d, PB: tl.constexpr):
    """Pass (c)'s own merge (S <= FUSE_MERGE_MAX_SPLITS): one program combines the S partial states
    of one (b, h) in a fixed order (deterministic, no atomics):
    M = max_s m_s, w_s = exp(m_s - M), L = sum_s w_s l_s, KV = sum_s w_s KV_s / L, ksum likewise.
    Returns KV's even and odd rows (PB, DB), ksum's halves (PB,) x2, M, L."""
    DB: tl.constexpr = 2 * PB
    _qbar, _kv, _ks, _ml, PART = state_ptrs(WS, tl.num_programs(0), d)
    _qsum, KV_P, KS_P, M_P, L_P = partial_ptrs(PART, tl.num_programs(0), n_splits, d)
    m_all = tl.load(M_P + bh * n_splits)
    for s in range(1, n_splits):
        m_all = tl.maximum(m_all, tl.load(M_P + bh * n_splits + s))
    l_all = 0.0
    kv_e = tl.zeros((PB, DB), dtype=tl.float32)
    kv_o = tl.zeros((PB, DB), dtype=tl.float32)
    ks_e = tl.zeros((PB,), dtype=tl.float32)
    ks_o = tl.zeros((PB,), dtype=tl.float32)
    for s in range(0, n_splits):
        part = bh * n_splits + s
        w = tl.exp(tl.load(M_P + part) - m_all)
        l_all += w * tl.load(L_P + part)
        p_e, p_o = load_rows_halves(KV_P + part * d * d, d, 0, PB, DB)
        kv_e += w * p_e
        kv_o += w * p_o
        k_e, k_o = load_vec_halves(KS_P + part * d, d, PB)
        ks_e += w * k_e
        ks_o += w * k_o
    inv_l = 1.0 / l_all
    return kv_e * inv_l, kv_o * inv_l, ks_e * inv_l, ks_o * inv_l, m_all, l_all


@triton.jit
def store_state(WS, bh, kv_e, kv_o, ks_e, ks_o, m_all, l_all, d, PB: tl.constexpr):
    """Store the merged state of one (b, h) where the backward finds it."""
    _qbar, KV, KS, ML, _part = state_ptrs(WS, tl.num_programs(0), d)
    store_rows_halves(KV + bh * d * d, kv_e, kv_o, d, 0, PB, 2 * PB)
    store_vec_halves(KS + bh * d, ks_e, ks_o, d, PB)
    tl.store(ML + bh * 2, m_all)
    tl.store(ML + bh * 2 + 1, l_all)


@triton.jit
def value_columns_start(VB: tl.constexpr, PB: tl.constexpr):
    """First value column of this program: program_id(2) * VB where the forward splits KV's columns
    (VB < the d-block), else the constant 0 (no index arithmetic or branches in the compiled kernel)."""
    if VB == 2 * PB:
        c0 = 0
    else:
        c0 = tl.program_id(2) * VB
    return c0


@triton.jit
def block_range(N, bps, BLOCK_N: tl.constexpr, TAIL: tl.constexpr):
    """Split s's token blocks [b0, b1). TAIL (token-major inputs): the unmasked main loop runs
    [b0, b_main) and the block b_main (N % BLOCK_N tokens) runs masked when has_tail (last split
    only, only if N % BLOCK_N): the main loop's tiles keep 16-byte accesses. Otherwise (channel-major:
    a token mask is constant along the contiguous channels anyway) one masked loop over [b0, b1):
    a second copy of the loop body would keep its own layouts of the loop invariants live
    (up to ~150 more registers per thread, measured on sm_90 fp32)."""
    b0 = tl.program_id(1) * bps
    b1 = tl.minimum(b0 + bps, tl.cdiv(N, BLOCK_N))
    if TAIL:
        n_full = N // BLOCK_N
        b_main = tl.minimum(b1, n_full)
        has_tail = b1 > n_full
    else:
        b_main = b1
        has_tail = b1 < b0  # never
    return b0, b_main, has_tail


@triton.jit
def sum_in_order(P, n, SB: tl.constexpr):
    """sum_i P[i] for i < n, SB at a time in a fixed order (deterministic, no atomics)."""
    acc = 0.0
    for i0 in range(0, n, SB):
        i = i0 + tl.arange(0, SB)
        acc += tl.sum(tl.load(P + i, mask=i < n, other=0.0), 0)
    return acc
