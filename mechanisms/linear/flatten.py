"""FLatten, focused linear attention (`flatten`, mixer-only).

Paper: Han, Pan, Han, Song, Huang, "FLatten Transformer: Vision Transformer using Focused Linear
Attention", ICCV 2023.

Formula: focused feature map f_p(x) = ||x|| / ||x^p|| * x^p (elementwise power p, norms over the
channels) applied to x = ReLU(x) + 1e-6 scaled by a learned softplus(scale); then linear attention
plus a depthwise conv (DWC) on v that restores feature diversity (rank):
    q' = f_p((ReLU(q) + 1e-6) / softplus(s)),  k' likewise,
    out_n = q'_n^T (K'^T V / N) / (q'_n . mean_m k'_m + 1e-6) + DWC(V)_n.
Checked against LeapLabTHU/FLatten-Transformer at abdb115f, `models/flatten_pvt.py`
(FocusedLinearAttention): with their weights, the mixer agrees to fp32 rounding
(tests/fixtures/linear/flatten.pt). Their defaults: focusing_factor p = 3, kernel_size 5, the learned
`scale` (1, 1, C) initialised to 0, norms over all C channels *before* the head split, the DWC a
Conv2d(d, d, 5, groups=d) shared by the heads and applied per head, and a learned absolute
`positional_encoding` (1, P, C), zero-initialised, added to k. The mixer is their layer: q/kv
projections (the shell's qkv conv), the operator, the output projection; no LePE, no gate (the
shell's `lepe=True` / `gate=True` add them; the row's `variant` says so). Positional table:
P = pos_grid^2 tokens (their num_patches; default 14 x 14), bilinearly interpolated at other grids
(our extension: theirs exists at one resolution only); pos_grid=0 leaves it out. PVT's spatial reduction is left
out (sr = 1).
Options: focusing_factor (3), kernel_size (5), pos_grid (14). Mixer-only: `scale`, the DWC and the
positional table are learned.

KV buffer (on the operator module): K'^T V / N, (B, h, d, d).
FLOPs (forward, per batch*head): KV 2Nd^2, output 2Nd^2, normaliser 2Nd, DWC 2 k^2 N d.
Bytes: the shell's minimum plus the operator's parameters.
"""

from __future__ import annotations

from torch import Tensor

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearMixerBase, PvtOperator, compute_dtype, mean_kv, merge_head_dim, split_head_dim

CITE = "Han et al., FLatten Transformer: Vision Transformer using Focused Linear Attention, ICCV 2023"


def focus(x: Tensor, scale: Tensor, p: float) -> Tensor:
    """f_p((ReLU(x) + 1e-6) / scale) over the merged channels: (B, N, C) -> (B, N, C)."""
    x = (x.relu() + 1e-6) / scale
    x_norm = x.norm(dim=-1, keepdim=True)
    x = x**p
    return x / x.norm(dim=-1, keepdim=True) * x_norm


class FocusedLinearOperator(PvtOperator):
    """Focused linear attention + per-head DWC on v; parameters (PvtOperator's) `scale` (1, 1, C), `dwc` and
    `positional_encoding` (1, pos_grid^2, C) added to k (absent when pos_grid = 0)."""

    def __init__(self, dim: int, num_heads: int, focusing_factor: float, kernel_size: int, pos_grid: int = 14):
        super().__init__(dim, num_heads, kernel_size, pos_grid)
        self.focusing_factor = focusing_factor

    def features(self, x: Tensor) -> Tensor:
        """(B, N, C) merged channels -> focused features (B, h, N, d); norms over all h*d channels. The power
        is taken in float32 for 16-bit inputs (as autocast does for pow); f_p preserves the norm, so the
        result is cast back safely."""
        dtype = compute_dtype(x)
        focused = focus(x.to(dtype), self.softplus_scale(dtype), self.focusing_factor).to(x.dtype)  # (B, N, C)
        return split_head_dim(focused, self.num_heads)

    def key_features(self, k: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, h, N, d) keys -> focused features of k + the positional table, (B, h, N, d)."""
        return self.features(self.with_positions(merge_head_dim(k), grid))

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        return mean_kv(self.key_features(k, grid), v)  # (B, h, d, d)

    def attention(self, q, k, v, grid):
        qf, kf = self.features(merge_head_dim(q)), self.key_features(k, grid)  # (B, h, N, d)
        z = 1 / (qf @ kf.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, h, N, 1)
        return qf @ mean_kv(kf, v) * z  # (B, h, N, d)


@register_mechanism("flatten", family="linear", backend="torch", cite=CITE)
class Flatten(LinearMixerBase):
    """FLatten focused linear attention (learned scale + DWC): mixer only."""

    option_defaults = {"focusing_factor": 3, "kernel_size": 5, "pos_grid": 14}
    upstream = "LeapLabTHU/FLatten-Transformer@abdb115f models/flatten_pvt.py"

    def build_operator(self, dim, num_heads, *, focusing_factor, kernel_size, pos_grid):
        return FocusedLinearOperator(dim, num_heads, focusing_factor, kernel_size, pos_grid)

    def operator_flops(self, s: Shape, *, focusing_factor, kernel_size, pos_grid) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (2 * d * d + d + kernel_size**2 * d)

    def operator_params(self, dim, heads, *, focusing_factor, kernel_size, pos_grid) -> int:
        return PvtOperator.param_count(dim, heads, kernel_size, pos_grid)
