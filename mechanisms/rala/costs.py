"""RALA's analytic costs, shared by every RALA form (`base.RalaBase`).

Conventions (mechanisms/common.py): 2 FLOPs per multiply-add, matmuls and convolutions only;
elementwise work (phi, softmax over tokens, RoPE, the reweighting, the 1/z division, the gate) and
the two token means are excluded; fwd_bwd = 3 x fwd, bwd = 2 x fwd (each matmul's backward computes
two gradients of its forward's size). These equal torch FlopCounterMode's count of `rala_op` and of the
mixer exactly (forward and forward + backward w.r.t. inputs and weights; tests/test_counting.py).

Per batch and head, with N tokens and head dim d, the operator's matmuls are:
  qbar @ k^T (1 x d x N) -> N d;  q @ mean(k)^T (N x d x 1) -> N d;
  kr^T @ v (d x N x d) -> N d^2;   qr @ KV (N x d x d) -> N d^2.
Mixer = operator + the shell's convs (qkvo C->4C, 5x5 depthwise lepe, proj C->C; `shell_flops`).

Bytes (minimum DRAM/HBM traffic of one forward): the operator must read q twice - qbar, a mean
over all tokens of phi(q), is needed before any token's softmax weight, and the output pass needs
every q again - plus k and v once, and write the output once: 5 (B, h, N, d) tensors. RoPE tables
are not counted (a kernel can compute them on the fly). Mixer: the common lower bound of every
mixer (read x and the weights once, write y once; `mixer_bytes`), so mixers compare on one rule.
"""

from __future__ import annotations

from attnbench.registry import Shape

# the operator reads q twice (qbar pass + output pass), k and v once, writes the output once
RALA_OP_READS = 4
RALA_OP_WRITES = 1


def rala_core_flops(s: Shape) -> float:
    """Forward matmul FLOPs of the operator: scores qbar.k (N d), z (N d), KV (N d^2), out (N d^2)."""
    bhn, d = s.batch * s.heads * s.tokens, s.head_dim
    return 2.0 * bhn * (2 * d * d + 2 * d)
