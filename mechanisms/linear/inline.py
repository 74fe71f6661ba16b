"""InLine, injective linear attention (`inline`).

Paper: Han, Pu, Xia, Han, Pan, Li, Lu, Song, Huang, "Bridging the Divide: Reconsidering Softmax and
Linear Attention", NeurIPS 2024.

Formula (eq. 5, identity kernel phi(x) = x, s = 1/sqrt(d)): the attention weights are shifted to sum
to one instead of being divided by their sum, which keeps the map from queries to attention
distributions injective:
    w_nm = (s/N) (q_n . k_m - mean_l q_n . k_l) + 1/N,     out_n = sum_m w_nm v_m
         = q_n^T KV + (1 - s q_n . kbar) vbar,   KV = (s/N) K^T V, kbar, vbar the token means.
Checked against LeapLabTHU/InLine, `models/inline_pvt.py` at e463a6f4 (InLineAttention; identity
kernel; KV as (K^T sqrt(s/N)) @ (V sqrt(s/N))): op and mixer agree to fp32 rounding
(tests/fixtures/linear/inline.pt, scripts/make_linear_fixtures.py).
The mixer is their layer: q/kv projections (the shell's qkv conv), eq. 5, their local residual - a
per-channel 3 x 3 depthwise conv on v whose kernels are predicted per image by `residual` =
Conv1d(C, C, 1, groups=h) -> GELU -> Conv1d(C, 9C, 1, groups=h) from the token mean of the layer
input x (the shell passes x to this operator) - and the output projection; no LePE, no gate (the
shell's `lepe=True` / `gate=True` add them). PVT's spatial reduction is left out (sr = 1).
The op is the parameter-free attention of eq. 5.

KV buffer: the matrix queries multiply, KV - s kbar vbar^T = (s/N) K^T (V - vbar), (B, h, d, d)
(out_n = q_n^T KV' + vbar).
FLOPs (forward, per batch*head): KV 2Nd^2, q KV 2Nd^2, q . kbar 2Nd -> 4Nd^2 + 2Nd; the mixer's
operator adds the residual conv 2*9*N*d per head and its predictor 20 C^2 / h per image.
Bytes: q, k, v read once, out written once (plus the residual's parameters at mixer level).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid, from_map, to_map

CITE = "Han et al., Bridging the Divide: Reconsidering Softmax and Linear Attention, NeurIPS 2024"


def inline_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Injective linear attention (identity kernel): (B, h, N, d) x3 -> (B, h, N, d)."""
    n, scale = q.shape[-2], q.shape[-1] ** -0.5
    kv = (k.transpose(-2, -1) * (scale / n) ** 0.5) @ (v * (scale / n) ** 0.5)  # (B, h, d, d)
    k_mean = k.mean(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, d, 1)
    return q @ kv + (1 - (q @ k_mean) * scale) * v.mean(dim=-2, keepdim=True)


def inline_state(k: Tensor, v: Tensor) -> Tensor:
    """(s/N) K^T (V - vbar): the (B, h, d, d) matrix every query multiplies."""
    n, scale = k.shape[-2], k.shape[-1] ** -0.5
    return (k.transpose(-2, -1) * (scale / n)) @ (v - v.mean(dim=-2, keepdim=True))


class InLineOperator(nn.Module):
    """Eq. 5 plus the predicted 3 x 3 local residual on v; parameters `residual.0`, `residual.2`."""

    reads_input = True  # the kernel predictor reads the token mean of the layer input x

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.residual = nn.Sequential(
            nn.Conv1d(dim, dim, 1, groups=num_heads), nn.GELU(), nn.Conv1d(dim, dim * 9, 1, groups=num_heads)
        )

    def forward(self, q, k, v, *, grid, rope=None, x=None):
        """x: the layer input (B, C, H, W) whose token mean feeds the kernel predictor."""
        check_grid(grid, q.shape[-2])
        if x is None:
            raise ValueError("the InLine operator needs the layer input x (its kernel predictor reads mean(x))")
        batch, channels = v.shape[0], v.shape[1] * v.shape[3]
        x_mean = x.flatten(2).mean(dim=-1, keepdim=True)  # (B, C, 1)
        weight = self.residual(x_mean).reshape(batch * channels, 1, 3, 3)  # per-image, per-channel kernels
        v_map = to_map(v, grid).reshape(1, batch * channels, grid[0], grid[1])  # (1, B*C, H, W)
        local = F.conv2d(v_map, weight, padding=1, groups=batch * channels)  # (1, B*C, H, W)
        local = from_map(local.reshape(batch, channels, grid[0], grid[1]), self.num_heads)  # (B, h, N, d)
        return inline_attention(q, k, v) + local

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        return inline_state(k, v)


@register_mechanism("inline", family="linear", backend="torch", cite=CITE)
class InLine(LinearOpBase):
    """Injective linear attention; op (eq. 5) and mixer (eq. 5 + predicted local residual)."""

    upstream = "LeapLabTHU/InLine@e463a6f4 models/inline_pvt.py"

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        return inline_attention(q, k, v)

    def state(self, q, k, v, *, grid):
        return inline_state(k, v)

    def make_operator(self, dim, num_heads):
        return InLineOperator(dim, num_heads)

    def attention_flops(self, s: Shape) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (2 * d * d + d)

    def operator_flops(self, s: Shape) -> float:
        local = 2.0 * s.batch * s.heads * s.tokens * 9 * s.head_dim
        predictor = 2.0 * s.batch * 10 * s.dim * s.dim / s.heads
        return self.attention_flops(s) + local + predictor

    def operator_params(self, dim, heads) -> int:
        return (dim * dim // heads + dim) + (9 * dim * dim // heads + 9 * dim)
