"""Performer, FAVOR+ with positive orthogonal random features (`performer`).

Paper: Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.

Formula: softmax attention exp(q.k / sqrt(d)) is approximated by phi(q).phi(k) with m positive
random features, x' = x d^(-1/4):
    phi(x) = m^(-1/2) exp(W x' - |x'|^2 / 2)        (W: m x d, rows w_i)
    out_n = phi(q_n)^T KV / (phi(q_n)^T ksum),   KV = sum_m phi(k_m) v_m^T (m x d), ksum = sum_m phi(k_m).
W is a stack of independent orthogonal d x d blocks (QR of Gaussian matrices) whose rows are rescaled
to the norms of independent Gaussian vectors, drawn once from `seed` (so every run sees the same
features). Checked against lucidrains/performer-pytorch at fc8b7844,
`performer_pytorch/performer_pytorch.py` (FastAttention with the default softmax kernel; W =
gaussian_orthogonal_random_matrix with scaling=0): with their W loaded, op and mixer agree to fp32
rounding (tests/fixtures/linear/performer.pt). Their feature map adds eps = 1e-4 after a max shift,
    phi(x) = m^(-1/2) (exp(W x' - |x'|^2 / 2 - c) + eps),
c = max_j (W x')_j per query, max over all keys and features of the head for keys; eps is our
default too (`eps=0` gives the unbiased estimator; then c cancels and ours shifts by the max of the
whole exponent, so the largest feature is exactly 1 and nothing underflows to 0/0).
The normaliser is clamped at the smallest normal float, so an all-underflow row gives 0, not NaN.
Features are computed in float32 for 16-bit inputs (|x|^2 overflows fp16).

Options: features m (default 256), seed (default 0), eps (default 1e-4). The op uses them as keyword
arguments (defaults when called as op(q, k, v, grid=...)); the mixer keeps W as the buffer
`operator.projection` (m, d) (a mixer cast to a 16-bit dtype keeps W rounded to it). The row's
`variant` records m and eps where they differ from these defaults ("features=128", "eps=0.0").
The mixer is the attention layer around the operator (their `Attention`: to_q/k/v, FastAttention,
to_out), no LePE, no gate.

KV buffer: phi(K)^T V, (B, h, m, d) (rank <= d).
FLOPs (forward, per batch*head): features 2*2Ndm, KV 2Nmd, output 2Nmd, normaliser 2Nm -> 8Nmd + 2Nm.
Bytes: q, k, v read once (the key max is an online rescale, as in a FlashAttention pass), out written.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid, compute_dtype

CITE = "Choromanski et al., Rethinking Attention with Performers, ICLR 2021"
EPS = 1e-4  # added to every feature by the authors' softmax_kernel


@functools.lru_cache(maxsize=32)
def _projection_cpu(head_dim: int, features: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-features // head_dim)):  # ceil(m / d) orthogonal blocks
        gauss = torch.randn(head_dim, head_dim, generator=g, dtype=torch.float64)
        q, _ = torch.linalg.qr(gauss)
        blocks.append(q.T)  # rows orthonormal
    w = torch.cat(blocks)[:features]  # (m, d)
    norms = torch.randn(features, head_dim, generator=g, dtype=torch.float64).norm(dim=1)  # chi_d
    return norms[:, None] * w  # float64


@functools.lru_cache(maxsize=64)
def _projection_on(head_dim: int, features: int, seed: int, device: str, dtype: torch.dtype) -> Tensor:
    return _projection_cpu(head_dim, features, seed).to(torch.float32).to(device=device, dtype=dtype)


def performer_projection(
    head_dim: int,
    features: int = 256,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The seeded random feature matrix W (m, d): drawn in float64 on CPU, rounded to float32 (same
    values on every machine), then cast to `dtype` on `device`. Cached: do not modify in place."""
    if features < 1:
        raise ValueError(f"performer needs features >= 1, got {features}")
    return _projection_on(head_dim, features, seed, str(device), dtype)


def favor_features(x: Tensor, w: Tensor, *, is_query: bool, eps: float = EPS) -> Tensor:
    """Positive random features of x (B, h, N, d) with W (m, d): (B, h, N, m), stabilised by a max
    shift; with eps > 0 the shift is the authors' (max of W x'), with eps = 0 the max of the exponent."""
    x = x * x.shape[-1] ** -0.25
    proj = x @ w.T  # (B, h, N, m)
    logits = proj - (x * x).sum(dim=-1, keepdim=True) / 2
    shifted = proj if eps else logits
    shift = shifted.amax(dim=-1, keepdim=True) if is_query else shifted.amax(dim=(-2, -1), keepdim=True)
    return (torch.exp(logits - shift) + eps) * w.shape[0] ** -0.5


def favor_state(k: Tensor, v: Tensor, w: Tensor, eps: float = EPS) -> Tensor:
    """KV = phi(K)^T V, (B, h, m, d), in the compute dtype (float32 for 16-bit inputs)."""
    dtype = compute_dtype(k)
    kf = favor_features(k.to(dtype), w.to(device=k.device, dtype=dtype), is_query=False, eps=eps)  # (B, h, N, m)
    return kf.transpose(-2, -1) @ v.to(dtype)


def favor_attention(q: Tensor, k: Tensor, v: Tensor, w: Tensor, eps: float = EPS) -> Tensor:
    """FAVOR+ output (B, h, N, d); computed in float32 for 16-bit inputs."""
    dtype = compute_dtype(q)
    w = w.to(device=q.device, dtype=dtype)
    qf = favor_features(q.to(dtype), w, is_query=True, eps=eps)
    kf = favor_features(k.to(dtype), w, is_query=False, eps=eps)  # (B, h, N, m)
    kv = kf.transpose(-2, -1) @ v.to(dtype)  # (B, h, m, d)
    ksum = kf.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, m, 1)
    den = (qf @ ksum).clamp_min(torch.finfo(dtype).tiny)  # (B, h, N, 1)
    return ((qf @ kv) / den).to(v.dtype)


class PerformerOperator(nn.Module):
    """The mixer's operator: FAVOR+ with the seeded projection as buffer `projection` (m, d)."""

    def __init__(self, head_dim: int, features: int, seed: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.register_buffer("projection", performer_projection(head_dim, features, seed).clone())

    def forward(self, q, k, v, *, grid, rope=None):
        check_grid(grid, q.shape[-2])
        return favor_attention(q, k, v, self.projection, self.eps)

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        return favor_state(k, v, self.projection, self.eps)  # (B, h, m, d)

    def extra_repr(self) -> str:
        return f"features={self.projection.shape[0]}, eps={self.eps:g}"


@register_mechanism("performer", family="linear", backend="torch", cite=CITE)
class Performer(LinearOpBase):
    """FAVOR+ (positive orthogonal random features); op and mixer; options features, seed, eps."""

    option_defaults = {"features": 256, "seed": 0, "eps": EPS}
    upstream = "lucidrains/performer-pytorch@fc8b7844 performer_pytorch/performer_pytorch.py"

    def attend(self, q, k, v, *, grid, features, seed, eps):
        check_grid(grid, q.shape[-2])
        w = performer_projection(q.shape[-1], features, seed, device=q.device, dtype=compute_dtype(q))
        return favor_attention(q, k, v, w, eps)

    def state(self, q, k, v, *, grid, features, seed, eps):
        return favor_state(k, v, performer_projection(k.shape[-1], features, seed), eps)  # (B, h, m, d)

    def make_operator(self, dim, num_heads, *, features, seed, eps):
        return PerformerOperator(dim // num_heads, features, seed, eps)

    def attention_flops(self, s: Shape, *, features, seed, eps) -> float:
        bhn, d, m = s.batch * s.heads * s.tokens, s.head_dim, features
        return 2.0 * bhn * (4 * d * m + m)
