"""A mechanism plugin: the minimum is one class with one method, `op`.

Use it from a suite with `plugins: [./my_mechanism.py]` (a path relative to the suite file) or
`plugins: [my_mechanism]` (a module on PYTHONPATH), and `mechanisms: [my_mechanism]`.

`reference` names the registered mechanism whose float64 output this one must match: every case is
verified, and a case that fails verification is an error row without a time. Leave it None (the default)
to check the mechanism against itself run in float64 (this catches overflow and low-precision
accumulation); name another mechanism only when this one computes the same function, e.g.
`reference="softmax_eager"` for a new kernel of softmax attention.
"""

from __future__ import annotations

import torch

from attnbench.registry import Mechanism, register_mechanism


@register_mechanism("my_mechanism", family="mine")  # reference=None: checked against itself in float64
class MyMechanism(Mechanism):
    """Linear attention with the elu(x) + 1 feature map (Katharopoulos et al., 2020)."""

    def op(self, q, k, v, *, grid):
        """q, k, v: (batch, heads, N, head_dim); grid = (H, W) with N = H * W. Returns (batch, heads, N, head_dim)."""
        q = torch.nn.functional.elu(q) + 1
        k = torch.nn.functional.elu(k) + 1
        kv = k.transpose(-2, -1) @ v / k.shape[-2]  # (batch, heads, head_dim, head_dim): mean of k_m v_m^T
        normaliser = (q * k.mean(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True)  # (batch, heads, N, 1)
        return (q @ kv) / normaliser  # means, not sums: the same ratio, and no overflow in fp16

    # Optional; each adds to what a suite can measure (the built-ins in mechanisms/ are complete examples):
    #
    # def mixer(self, dim, num_heads, **options):  # mixer level: an nn.Module, forward(x (B, C, H, W), rope)
    #     from attnbench.layers import TokenMixer
    #     return TokenMixer(dim, num_heads, lambda q, k, v, *, grid, rope: self.op(q, k, v, grid=grid))
    #
    # def flops(self, s, *, level, pass_):  # analytic FLOPs, op level here (the flops and frac_flops rows)
    #     return 4.0 * s.batch * s.heads * s.tokens * s.head_dim**2 * {"fwd": 1, "fwd_bwd": 3, "bwd": 2}[pass_]
    #
    # def bytes(self, s, *, level, dtype):  # least memory traffic of one forward, op level (frac_bandwidth rows)
    #     from mechanisms.common import op_bytes
    #     return op_bytes(s, dtype)
    #
    # def check(self, device):  # None where it can run, else the reason (its cases become skipped rows)
    #     return None
    #
    # register_mechanism also takes dtypes=("fp32", "bf16"), devices=("cuda",), requires=("some_package",),
    # has_backward=False and cite="Author et al., Venue Year".
