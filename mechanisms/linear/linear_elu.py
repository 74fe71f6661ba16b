"""ELU+1 linear attention (`linear_elu`).

Paper: Katharopoulos, Vyas, Pappas, Fleuret, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention", ICML 2020.

Formula (non-causal), phi(t) = ELU(t) + 1 elementwise:
    out_n = phi(q_n)^T KV / (phi(q_n)^T ksum + eps),   KV = sum_m phi(k_m) v_m^T (d x d),
    ksum = sum_m phi(k_m),   eps = 1e-6.
Checked against idiap/fast-transformers at 2ad36b97, `fast_transformers/attention/linear_attention.py`
(LinearAttention: KV by einsum over tokens, Z = 1 / (Q . K.sum + eps), eps = 1e-6): the op agrees to
fp32 rounding (tests/fixtures/linear/linear_elu.pt). The mixer is the attention layer around it
(their AttentionLayer: q/k/v projections, the operator, out projection), no LePE, no gate.

KV buffer: KV = phi(K)^T V, (B, h, d, d).
FLOPs (forward, per batch*head): KV 2Nd^2, numerator 2Nd^2, normaliser 2Nd -> 4Nd^2 + 2Nd.
Bytes: q, k, v read once (KV pass reads k, v; output pass reads q), out written once.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid

CITE = "Katharopoulos et al., Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention, ICML 2020"
EPS = 1e-6


def elu_feature(t: Tensor) -> Tensor:
    return F.elu(t) + 1.0


def kernel_linear_attention(qf: Tensor, kf: Tensor, v: Tensor, eps: float) -> Tensor:
    """out = qf (kf^T v) / (qf . sum kf + eps) for positive features qf, kf (B, h, N, r), v (B, h, N, d)."""
    kv = kf.transpose(-2, -1) @ v  # (B, h, r, d)
    ksum = kf.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, r, 1)
    return (qf @ kv) / (qf @ ksum + eps)  # (B, h, N, d)


@register_mechanism("linear_elu", family="linear", backend="torch", cite=CITE)
class LinearElu(LinearOpBase):
    """phi = ELU + 1 kernel linear attention; op and mixer (the shell around the op)."""

    upstream = "idiap/fast-transformers@2ad36b97 fast_transformers/attention/linear_attention.py"

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        return kernel_linear_attention(elu_feature(q), elu_feature(k), v, EPS)

    def state(self, q, k, v, *, grid):
        return elu_feature(k).transpose(-2, -1) @ v  # (B, h, d, d)

    def attention_flops(self, s: Shape) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (2 * d * d + d)
