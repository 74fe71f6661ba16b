"""Hydra attention (`hydra`).

Paper: Bolya, Fu, Dai, Zhang, Hoffman, "Hydra Attention: Efficient Attention with Many Heads",
ECCV 2022 Workshops (CADL).

Formula: as many heads as features (H = D), cosine-similarity kernel phi(x) = x / ||x||_2 over the
whole feature vector:
    out_n = phi(q_n) (.) sum_t phi(k_t) (.) v_t          ((.) = elementwise product)
i.e. a global feature vector kv = sum_t phi(k_t) (.) v_t gates every query.
Heads: Hydra's heads have size 1, so the shell's (B, h, N, d) split only matters for phi; following
the paper, phi normalises over all h*d channels of a token (heads merged), so op and mixer compute
the same function for any head count. No authors' code is published (checked against the paper only:
an fp64 reference from its formula in tests/test_linear_mechanisms.py). The mixer is the plain
attention layer around the op (qkv projection, operator, proj; no LePE, no gate). The code follows
the paper's own PyTorch listing (`q / q.norm(dim=-1, keepdim=True)`, `kv = (k * v).sum(dim=-2)`, `out = q * kv`); the L2
normalisation uses torch.nn.functional.normalize (eps 1e-12) so all-zero tokens give 0, not NaN.

KV buffer: the linear map q -> out is diag(kv); per head (B, h, d, d) = diag_embed(kv_head).
FLOPs (forward, per batch*head): the token contraction sum_t k_t (.) v_t is a batched dot product
(einsum -> bmm), 2Nd; the final q (.) kv is elementwise and excluded by the convention -> 2Nd.
Bytes: q, k, v read once, out written once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid, merge_head_dim, split_head_dim

CITE = "Bolya et al., Hydra Attention: Efficient Attention with Many Heads, ECCV Workshops 2022"


def hydra_state(k: Tensor, v: Tensor) -> Tensor:
    """kv = sum_t phi(k_t) (.) v_t over the merged heads: (B, h, N, d) x2 -> (B, 1, h*d)."""
    kn = F.normalize(merge_head_dim(k), dim=-1)  # (B, N, C)
    return torch.einsum("bnc,bnc->bc", kn, merge_head_dim(v)).unsqueeze(1)  # (B, 1, C)


@register_mechanism("hydra", family="linear", backend="torch", cite=CITE)
class Hydra(LinearOpBase):
    """Hydra attention (heads = features, cosine kernel); op and mixer."""

    upstream = "(no public code; paper's listing)"

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        qn = F.normalize(merge_head_dim(q), dim=-1)  # (B, N, C)
        return split_head_dim(qn * hydra_state(k, v), q.shape[1])  # (B, h, N, d)

    def state(self, q, k, v, *, grid):
        batch, heads, _, head_dim = k.shape
        return torch.diag_embed(hydra_state(k, v).reshape(batch, heads, head_dim))  # (B, h, d, d)

    def attention_flops(self, s: Shape) -> float:
        return 2.0 * s.batch * s.heads * s.tokens * s.head_dim
