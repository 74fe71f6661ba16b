"""Efficient Attention (`efficient_attention`).

Paper: Shen, Zhang, Zhao, Yi, Li, "Efficient Attention: Attention with Linear Complexities",
WACV 2021.

Formula (the softmax normalisation variant):
    out = rho_q(Q) (rho_k(K)^T V),   rho_q = softmax over the d channels of each query,
                                     rho_k = softmax over the N tokens of each key channel.
No 1/sqrt(d) scaling and no separate normaliser (each row of rho_q(Q) rho_k(K)^T sums to 1).
Checked against cmsflash/efficient-attention at 46a5f9ea, `efficient_attention.py` (EfficientAttention:
keys softmax over positions, queries softmax over channels, per head): op and mixer agree to fp32
rounding (tests/fixtures/linear/efficient_attention.pt). The mixer is their module without its
residual `+ input` (the block's, not the mixer's): 1x1 conv queries/keys/values (the shell's qkv
conv), the operator, the 1x1 `reprojection` (the shell's proj); no LePE, no gate.

KV buffer: the global context vectors rho_k(K)^T V, (B, h, d, d).
FLOPs (forward, per batch*head): context 2Nd^2 + output 2Nd^2 = 4Nd^2.
Bytes: q, k, v read once (the token softmax of k fuses into the context pass with an online max,
as in docs/rala.md, "One pass over the tokens"), out written once.
"""

from __future__ import annotations

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid

CITE = "Shen et al., Efficient Attention: Attention with Linear Complexities, WACV 2021"


@register_mechanism("efficient_attention", family="linear", backend="torch", cite=CITE)
class EfficientAttention(LinearOpBase):
    """Softmax over channels for q, over tokens for k, then the associative product; op and mixer."""

    upstream = "cmsflash/efficient-attention@46a5f9ea efficient_attention.py"

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        return q.softmax(dim=-1) @ self.state(q, k, v, grid=grid)  # (B, h, N, d)

    def state(self, q, k, v, *, grid):
        return k.softmax(dim=-2).transpose(-2, -1) @ v  # (B, h, d, d)

    def attention_flops(self, s: Shape) -> float:
        return 4.0 * s.batch * s.heads * s.tokens * s.head_dim**2
