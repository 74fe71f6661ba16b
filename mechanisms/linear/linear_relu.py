"""ReLU linear attention of EfficientViT (`linear_relu`).

Paper: Cai, Li, Hu, Gan, Han, "EfficientViT: Lightweight Multi-Scale Attention for High-Resolution
Dense Prediction", ICCV 2023.

Formula, phi(t) = ReLU(t):
    out_n = phi(q_n)^T KV / (phi(q_n)^T ksum + eps),   KV = sum_m phi(k_m) v_m^T,  ksum = sum_m phi(k_m).
Checked against mit-han-lab/efficientvit at de7d7733, `efficientvit/models/nn/ops.py`
(LiteMLA.relu_linear_att; the op agrees to fp32 rounding, tests/fixtures/linear/linear_relu.pt):
eps = 1e-15, no 1/sqrt(d) scaling, float32 arithmetic for fp16 inputs (their code upcasts fp16
inputs, and bf16 results before the division; we run both 16-bit types in float32 - 1e-15
underflows in fp16). Their trick of padding v with a ones column to get the
normaliser from the same matmul is replaced by a separate (equal) q . ksum.
With all-zero q or k the numerator and normaliser are both 0 and the output is 0 (no NaN).
The mixer is the plain attention layer around the op (qkv projection, operator, proj; no LePE, no
gate). LiteMLA's multi-scale token aggregation (5 x 5 grouped convs on qkv) and its BatchNorm'd
projection are not implemented: a `linear_relu` mixer row measures the ReLU linear attention layer,
not LiteMLA.

KV buffer: ReLU(K)^T V, (B, h, d, d).
FLOPs (forward, per batch*head): 4Nd^2 + 2Nd (as linear_elu). Bytes: q, k, v read once, out written.
"""

from __future__ import annotations

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid, compute_dtype
from mechanisms.linear.linear_elu import kernel_linear_attention

CITE = "Cai et al., EfficientViT: Lightweight Multi-Scale Attention for High-Resolution Dense Prediction, ICCV 2023"
EPS = 1e-15


@register_mechanism("linear_relu", family="linear", backend="torch", cite=CITE)
class LinearRelu(LinearOpBase):
    """phi = ReLU kernel linear attention (EfficientViT's LiteMLA core); op and mixer."""

    upstream = "mit-han-lab/efficientvit@de7d7733 efficientvit/models/nn/ops.py"

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        dtype = compute_dtype(q)
        q, k, vc = (t.to(dtype) for t in (q, k, v))
        return kernel_linear_attention(q.relu(), k.relu(), vc, EPS).to(v.dtype)

    def state(self, q, k, v, *, grid):
        return k.relu().transpose(-2, -1) @ v  # (B, h, d, d)

    def attention_flops(self, s: Shape) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (2 * d * d + d)
