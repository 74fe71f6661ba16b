"""PolaFormer, polarity-aware linear attention (`polaformer`, mixer-only).

Paper: Meng, Luo, Li, Jiang, Zhang, "PolaFormer: Polarity-aware Linear Attention for Vision
Transformers", ICLR 2025.

Formula: split q, k by sign, q+ = ReLU(q), q- = ReLU(-q) (likewise k), raise them to a learned
power p = 1 + alpha sigmoid(w) (per head and channel), and model same-signed and opposite-signed
interactions with the two halves of v:
    q_sim = [q+^p, q-^p], q_opp = [q-^p, q+^p], k' = [k+^p, k-^p]           (2d channels)
    out = [ q_sim KV_1 / (q_sim . mean k' + 1e-6),  q_opp KV_2 / (q_opp . mean k' + 1e-6) ] + DWC(V)
    KV_i = k'^T V_i / N,  V = [V_1, V_2] split along channels (d/2 each).
q and k are first divided by a learned softplus(scale) (1, 1, C); k first gets a learned absolute
positional table added. Checked against ZacharyMeng/PolaFormer at 44cdd39e, `models/pola_pvt.py`
(PolaLinearAttention): with their weights, the mixer agrees to fp32 rounding
(tests/fixtures/linear/polaformer.pt). Their defaults: alpha = 4, `power` (1, h, 1, d) and `scale`
(1, 1, C) initialised to 0, the DWC a Conv2d(d, d, 5, groups=d) shared by the heads, the zero-init
`positional_encoding` (1, P, C) added to k, and the gate g (from their `qg` projection, no
activation) multiplying attention + DWC before the output projection - which is the shell's gate.
So the mixer is their layer: the shell's qkvo conv (q, k, v and g), the operator, the gate, the
output projection; no LePE (the shell's `lepe=True` adds it; `gate=False` drops the gate; the
row's variant says so). Positional table: P = pos_grid^2 tokens (default 14 x 14), bilinearly
interpolated at other grids (our extension); pos_grid=0 leaves it out. PVT's spatial reduction is
left out (sr = 1). The attention runs in float32 for 16-bit inputs (p up to 5 overflows fp16).
Options: alpha (4), kernel_size (5), pos_grid (14).

KV buffer (on the operator module): [KV_1, KV_2] side by side, (B, h, 2d, d) (rank <= d).
FLOPs (forward, per batch*head): two KVs 2 x 2N(2d)(d/2), two outputs the same, two normalisers
2 x 2N(2d) -> 8Nd^2 + 8Nd; DWC 2 k^2 N d.
Bytes: the shell's minimum plus the operator's parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearMixerBase, PvtOperator, compute_dtype, mean_kv, merge_head_dim, split_head_dim

CITE = "Meng et al., PolaFormer: Polarity-aware Linear Attention for Vision Transformers, ICLR 2025"


class PolarityOperator(PvtOperator):
    """Polarity-aware linear attention + per-head DWC; parameters `power` (1, h, 1, d) and (PvtOperator's)
    `scale`, `dwc`, `positional_encoding`."""

    def __init__(self, dim: int, num_heads: int, alpha: float, kernel_size: int, pos_grid: int = 14):
        head_dim = dim // num_heads
        if head_dim % 2:
            raise ValueError(f"polaformer splits v in two halves: head_dim must be even, got {head_dim}")
        super().__init__(dim, num_heads, kernel_size, pos_grid, power=torch.zeros(1, num_heads, 1, head_dim))
        self.alpha = alpha

    def features(self, q: Tensor, k: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """(q_sim, q_opp, k'), each (B, h, N, 2d), in the compute dtype."""
        dtype = compute_dtype(q)
        scale = self.softplus_scale(dtype)  # (1, 1, C)
        power = 1 + self.alpha * torch.sigmoid(self.power.to(dtype))  # (1, h, 1, d)
        k_merged = self.with_positions(merge_head_dim(k.to(dtype)), grid)  # (B, N, C)
        q = split_head_dim(merge_head_dim(q.to(dtype)) / scale, self.num_heads)
        k = split_head_dim(k_merged / scale, self.num_heads)
        q_pos, q_neg = q.relu() ** power, (-q).relu() ** power
        k_pos, k_neg = k.relu() ** power, (-k).relu() ** power
        return torch.cat([q_pos, q_neg], dim=-1), torch.cat([q_neg, q_pos], dim=-1), torch.cat([k_pos, k_neg], dim=-1)

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        _, _, kf = self.features(q, k, grid)
        v1, v2 = v.to(kf.dtype).chunk(2, dim=-1)
        return torch.cat([mean_kv(kf, v1), mean_kv(kf, v2)], dim=-1)  # (B, h, 2d, d)

    def attention(self, q, k, v, grid):
        q_sim, q_opp, kf = self.features(q, k, grid)  # (B, h, N, 2d)
        v1, v2 = v.to(kf.dtype).chunk(2, dim=-1)  # (B, h, N, d/2) each
        k_mean = kf.mean(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, 2d, 1)
        x_sim = q_sim @ mean_kv(kf, v1) / (q_sim @ k_mean + 1e-6)
        x_opp = q_opp @ mean_kv(kf, v2) / (q_opp @ k_mean + 1e-6)
        return torch.cat([x_sim, x_opp], dim=-1).to(v.dtype)  # (B, h, N, d)


@register_mechanism("polaformer", family="linear", backend="torch", cite=CITE)
class PolaFormer(LinearMixerBase):
    """PolaFormer (learned scale, power, positions and DWC; gated): mixer only."""

    option_defaults = {"alpha": 4.0, "kernel_size": 5, "pos_grid": 14}
    shell_defaults = {"gate": True, "lepe": False}  # their layer multiplies by g = qg(x)[C:] before proj
    upstream = "ZacharyMeng/PolaFormer@44cdd39e models/pola_pvt.py"

    def build_operator(self, dim, num_heads, *, alpha, kernel_size, pos_grid):
        return PolarityOperator(dim, num_heads, alpha, kernel_size, pos_grid)

    def operator_flops(self, s: Shape, *, alpha, kernel_size, pos_grid) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (4 * d * d + 4 * d + kernel_size**2 * d)

    def operator_params(self, dim, heads, *, alpha, kernel_size, pos_grid) -> int:
        return PvtOperator.param_count(dim, heads, kernel_size, pos_grid) + dim  # + power (h * d)
