"""Nystromformer (`nystromformer`).

Paper: Xiong, Zeng, Chakraborty, Tan, Fung, Li, Singh, "Nystromformer: A Nystrom-Based Algorithm
for Approximating Self-Attention", AAAI 2021.

Formula: with m landmarks q~, k~ (segment means of the queries and keys) and s = 1/sqrt(d),
    F = softmax(s Q K~^T) (N x m),  A = softmax(s Q~ K~^T) (m x m),  Bm = softmax(s Q~ K^T) (m x N)
    out = F A^+ (Bm V),
where A^+ is the Moore-Penrose pseudo-inverse, approximated by 6 iterations of
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4,   Z_0 = A^T / max_j sum_i |A_ij|.
Where the paper is vague this follows mlpen/Nystromformer, `code/attention_nystrom.py` at 5f9a9ba4
(NystromAttention: q, k each scaled by d^(-1/4); segment-mean landmarks; iterative_inv with 6
iterations). Choices of ours, documented:
- Z_0 uses the per-(batch, head) max column sum (their non-"original" init option); the original
  takes the max over the whole batch, which couples batch elements.
- N not divisible by m: landmark i averages the contiguous tokens n with floor(n m / N) = i
  (near-equal segments, row-major); m > N uses m = N landmarks (then out is exact softmax attention).
- The optional depthwise conv on V of their code is left out (the shell's LePE plays that role).
Options: landmarks m (default 64), pinv_iters (default 6).

KV buffer: the landmark state A^+ (Bm V), (B, h, m, d), which every query reads through its softmax
row F_n (no d x d buffer exists; this is the fixed-size state, rank <= min(m, d)).
The product is associated as F (A^+ (Bm V)), which never forms the N x m matrix F A^+ of their code.
FLOPs (forward, per batch*head, matmuls only): F 2Nmd, A 2m^2 d, Bm 2mNd, Bm V 2mNd, pinv
iters x 4 x 2m^3, A^+ (Bm V) 2m^2 d, F (...) 2Nmd -> 8Nmd + 4m^2 d + 8 iters m^3 (affine in N).
fwd_bwd uses 3x (no scores are recomputed). Bytes: q and k are read twice (landmark pass, then the
F and Bm passes), v once, out written once: 5 reads + 1 write.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid

CITE = "Xiong et al., Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention, AAAI 2021"


def segment_means(x: Tensor, m: int) -> Tensor:
    """(B, h, N, d) -> (B, h, m, d): mean of the contiguous tokens n with floor(n m / N) = i."""
    n = x.shape[-2]
    seg = torch.arange(n, device=x.device) * m // n  # (N,) segment id, non-decreasing
    sums = x.new_zeros(*x.shape[:-2], m, x.shape[-1]).index_add_(-2, seg, x)  # (B, h, m, d)
    counts = torch.bincount(seg, minlength=m).to(x.dtype)  # (m,)
    return sums / counts[:, None]


def iterative_pinv(a: Tensor, iters: int) -> Tensor:
    """Newton-Schulz-type approximation of the pseudo-inverse of each (m, m) matrix of a (B, h, m, m)."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    col_sum = a.abs().sum(dim=-2).amax(dim=-1)  # (B, h) max column sum = ||A||_1
    z = a.transpose(-2, -1) / col_sum[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_parts(q: Tensor, k: Tensor, v: Tensor, landmarks: int, pinv_iters: int) -> tuple[Tensor, Tensor]:
    """(F (B, h, N, m), state A^+ (Bm V) (B, h, m, d))."""
    d = q.shape[-1]
    m = min(landmarks, q.shape[-2])
    q = q * d**-0.25
    k = k * d**-0.25
    q_l, k_l = segment_means(q, m), segment_means(k, m)  # (B, h, m, d)
    f = torch.softmax(q @ k_l.transpose(-2, -1), dim=-1)  # (B, h, N, m)
    a = torch.softmax(q_l @ k_l.transpose(-2, -1), dim=-1)  # (B, h, m, m)
    b = torch.softmax(q_l @ k.transpose(-2, -1), dim=-1)  # (B, h, m, N)
    return f, iterative_pinv(a, pinv_iters) @ (b @ v)


@register_mechanism("nystromformer", family="linear", backend="torch", cite=CITE)
class Nystromformer(LinearOpBase):
    """Nystrom approximation of softmax attention with segment-mean landmarks; op and mixer."""

    option_defaults = {"landmarks": 64, "pinv_iters": 6}
    op_reads = 5

    def attend(self, q, k, v, *, grid, landmarks, pinv_iters):
        check_grid(grid, q.shape[-2])
        f, state = nystrom_parts(q, k, v, landmarks, pinv_iters)
        return f @ state  # (B, h, N, d)

    def state(self, q, k, v, *, grid, landmarks, pinv_iters):
        return nystrom_parts(q, k, v, landmarks, pinv_iters)[1]  # (B, h, m, d)

    def attention_flops(self, s: Shape, *, landmarks, pinv_iters) -> float:
        n, d = s.tokens, s.head_dim
        m = min(landmarks, n)
        per_head = 8 * n * m * d + 4 * m * m * d + 8 * pinv_iters * m**3
        return float(s.batch * s.heads * per_head)
