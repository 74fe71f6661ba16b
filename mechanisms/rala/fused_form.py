"""The fused (one-pass, online-softmax) form of RALA's steps 2-5, in float64, for tests.

docs/rala.md "One pass over the tokens": KV = sum_m alpha_m R(phi(k_m)) v_m^T and ksum = sum_m alpha_m phi(k_m)
with alpha = softmax_m(d^-0.5 qbar . phi(k_m)); both built in one pass over token blocks with a
running max and running sum, rescaling the accumulators when the max changes, then divided by
the final sum. The output is out_n = R(phi(q_n)) @ KV / (phi(q_n) . ksum + 1e-6).

This is the executable statement of what the Triton kernel computes; tests compare it with the
two-pass definition (rala_op) and the kernel with it.
"""

from __future__ import annotations

import torch

from attnbench.layers import apply_rope, rope_tables
from mechanisms.rala.naive import phi


def fused_state(q, k, v, *, grid, block: int = 16, rope=None):
    """One-pass KV (B, h, d, d) and ksum (B, h, d) in float64, streaming `block` tokens at a time."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    n, d = k.shape[-2], k.shape[-1]
    if rope is None:
        sin, cos = rope_tables(grid[0], grid[1], d, dtype=torch.float64, device=k.device)
    else:
        sin, cos = (t.to(torch.float64) for t in rope)
    qbar = phi(q).mean(dim=-2)  # (B, h, d)
    scale = d**-0.5
    shape = k.shape[:-2]
    m = torch.full(shape, float("-inf"), dtype=torch.float64, device=k.device)  # running max (B, h)
    l = torch.zeros(shape, dtype=torch.float64, device=k.device)  # running sum of exp (B, h)
    kv = torch.zeros(*shape, d, d, dtype=torch.float64, device=k.device)
    ksum = torch.zeros(*shape, d, dtype=torch.float64, device=k.device)
    for start in range(0, n, block):
        sl = slice(start, min(start + block, n))
        kb = phi(k[..., sl, :])  # (B, h, b, d)
        s = scale * torch.einsum("...d,...nd->...n", qbar, kb)  # (B, h, b)
        m_new = torch.maximum(m, s.max(dim=-1).values)
        rescale = torch.exp(m - m_new)  # 0 on the first block (exp(-inf))
        p = torch.exp(s - m_new[..., None])  # (B, h, b)
        l = l * rescale + p.sum(dim=-1)
        kr = apply_rope(kb, sin[sl], cos[sl])  # (B, h, b, d)
        kv = kv * rescale[..., None, None] + torch.einsum("...n,...nd,...ne->...de", p, kr, v[..., sl, :])
        ksum = ksum * rescale[..., None] + torch.einsum("...n,...nd->...d", p, kb)
        m = m_new
    return kv / l[..., None, None], ksum / l[..., None]


def fused_rala(q, k, v, *, grid, block: int = 16, rope=None):
    """RALA output through the fused form, float64. (B, h, N, d) -> (B, h, N, d)."""
    kv, ksum = fused_state(q, k, v, grid=grid, block=block, rope=rope)
    d = q.shape[-1]
    qp = phi(q.to(torch.float64))
    if rope is None:
        sin, cos = rope_tables(grid[0], grid[1], d, dtype=torch.float64, device=q.device)
    else:
        sin, cos = (t.to(torch.float64) for t in rope)
    num = apply_rope(qp, sin, cos) @ kv  # (B, h, N, d)
    den = torch.einsum("...nd,...d->...n", qp, ksum)[..., None] + 1e-6
    return num / den
