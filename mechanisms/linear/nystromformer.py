"""Nystromformer (`nystromformer`).

Paper: Xiong, Zeng, Chakraborty, Tan, Fung, Li, Singh, "Nystromformer: A Nystrom-Based Algorithm
for Approximating Self-Attention", AAAI 2021.

Formula: with m landmarks q~, k~ (segment means of the queries and keys) and s = 1/sqrt(d),
    F = softmax(s Q K~^T) (N x m),  A = softmax(s Q~ K~^T) (m x m),  Bm = softmax(s Q~ K^T) (m x N)
    out = F A^+ (Bm V),
where A^+ is the Moore-Penrose pseudo-inverse, approximated by 6 iterations of
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4,   Z_0 = A^T / max_j sum_i |A_ij|.
Checked against mlpen/Nystromformer at 56893131: the vision layer
`ImageNet/T2T-ViT/models/token_nystromformer.py` (NysAttention: q scaled by 1/sqrt(d), which equals
scaling q and k by d^(-1/4); segment-mean landmarks; iterative_inv with 6 iterations and the
"exact" init) - op and mixer agree to fp32 rounding (tests/fixtures/linear/nystromformer.pt).
- Z_0 uses the per-(batch, head) max column sum (their default "exact" init); the "original" init
  takes the max over the whole batch, which couples batch elements.
- Landmarks when N is not a multiple of m (their split): with s = N // m, the first m (s + 1) - N
  landmarks average s contiguous tokens each, the remaining ones s + 1 (row-major token order).
  m > N uses m = N landmarks (then out is exact softmax attention).
- The mixer is the attention layer around the operator (qkv projection, operator, output
  projection); their optional depthwise conv on V (kernel_size 0 by default) is left out, and so is
  the T2T token layer's `v + x` residual, which belongs to T2T's tokens-to-token module.
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


def segment_ids(n: int, m: int, device=None) -> Tensor:
    """(N,) landmark index of each token: with s = N // m, the first m (s + 1) - N segments have s
    tokens and the rest s + 1 (mlpen/Nystromformer's vision split; all s when m divides N)."""
    s = n // m
    short = m * (s + 1) - n if n % m else m  # segments of s tokens
    sizes = torch.tensor([s] * short + [s + 1] * (m - short), device=device)
    return torch.repeat_interleave(torch.arange(m, device=device), sizes)


def segment_means(x: Tensor, m: int) -> Tensor:
    """(B, h, N, d) -> (B, h, m, d): the mean of each landmark's contiguous segment (`segment_ids`)."""
    seg = segment_ids(x.shape[-2], m, x.device)  # (N,) segment id, non-decreasing
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

    upstream = "mlpen/Nystromformer@56893131 ImageNet/T2T-ViT/models/token_nystromformer.py"

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
