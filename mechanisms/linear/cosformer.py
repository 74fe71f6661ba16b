"""cosFormer (`cosformer`).

Paper: Qin, Sun, Deng, Li, Wei, Lv, Yan, Kong, Zhong, "cosFormer: Rethinking Softmax in Attention",
ICLR 2022.

Formula: ReLU features with a cos-based re-weighting of the similarity by token distance,
    s(i, j) = ReLU(q_i) . ReLU(k_j) cos(pi/2 (i - j) / M),
decomposed with cos(a - b) = cos a cos b + sin a sin b into two linear-attention terms:
    q_i' = [ReLU(q_i) sin(pi i / 2M), ReLU(q_i) cos(pi i / 2M)]   (2d channels), k_j' likewise,
    out_i = q_i'^T KV / max(q_i'^T ksum, eps),   KV = sum_j k_j' v_j^T (2d x d), ksum = sum_j k_j'.
2D grid: the paper is written for 1D sequences. We re-weight over the row-major token index
i = row * W + col + 1 (1-based) with M = N, i.e. the image is read as the 1D sequence the shell's
flattening produces (horizontal neighbours are 1 apart, vertical neighbours W apart). This is the
choice the public code implies when an image is flattened; no 2D variant is published.
Checked against OpenNLPLab/cosFormer at 8e12da11, `cosformer.py` (CosformerAttention: index
pi/2 * arange(1, N+1) / M with M = max(src, tgt) = N; [sin, cos] concatenation order; denominator
clamp_min(., eps) with eps = 1e-6): op and mixer agree to fp32 rounding (tests/fixtures/linear/
cosformer.pt). The mixer is their layer: q/k/v projections with bias (the shell's qkv conv), the
operator, out_proj; no LePE, no gate (the shell's `lepe=True` / `gate=True` add them).

KV buffer: the stacked state [K_sin; K_cos]^T V, (B, h, 2d, d) (rank <= d).
FLOPs (forward, per batch*head): KV 2N(2d)d, output 2N(2d)d, normaliser 2N(2d) -> 8Nd^2 + 4Nd.
Bytes: q, k, v read once, out written once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid

CITE = "Qin et al., cosFormer: Rethinking Softmax in Attention, ICLR 2022"
EPS = 1e-6


def cos_reweighted(x: Tensor) -> Tensor:
    """(B, h, N, d) -> (B, h, N, 2d): [ReLU(x) sin(pi i / 2N), ReLU(x) cos(pi i / 2N)], i = 1..N."""
    n = x.shape[-2]
    angle = (math.pi / 2) * torch.arange(1, n + 1, device=x.device, dtype=torch.float64) / n  # (N,)
    sin, cos = angle.sin().to(x.dtype)[:, None], angle.cos().to(x.dtype)[:, None]  # (N, 1)
    x = x.relu()
    return torch.cat([x * sin, x * cos], dim=-1)


@register_mechanism("cosformer", family="linear", backend="torch", cite=CITE)
class CosFormer(LinearOpBase):
    """ReLU linear attention with cos re-weighting over the row-major token index; op and mixer."""

    upstream = "OpenNLPLab/cosFormer@8e12da11 cosformer.py"

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        qf, kf = cos_reweighted(q), cos_reweighted(k)  # (B, h, N, 2d)
        kv = kf.transpose(-2, -1) @ v  # (B, h, 2d, d)
        ksum = kf.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, 2d, 1)
        return (qf @ kv) / (qf @ ksum).clamp_min(EPS)

    def state(self, q, k, v, *, grid):
        return cos_reweighted(k).transpose(-2, -1) @ v  # (B, h, 2d, d)

    def attention_flops(self, s: Shape) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (4 * d * d + 2 * d)
