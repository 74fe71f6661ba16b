"""Agent attention (`agent`, mixer-only).

Paper: Han, Ye, Han, Xia, Pan, Wan, Song, Huang, "Agent Attention: On the Integration of Softmax and
Linear Attention", ECCV 2024.

Formula: n agent tokens A = pool(Q) (adaptive average pooling of the query map to sqrt(n) x sqrt(n));
two softmax attentions through the agents, s = 1/sqrt(d):
    V_A = softmax(s A K^T + B1) V          (agent aggregation, n x d)
    out = softmax(s Q A^T + B2) V_A + DWC(V)   (agent broadcast + depthwise conv on v)
B1 (n x N), B2 (N x n) are learned position biases. Where the paper is vague this follows
LeapLabTHU/Agent-Attention, `agent_transformer/models/agent_pvt.py` at 0ffd0d35 (AgentAttention):
agent_num n = 49 (7 x 7 pooling of q over the whole map, before the head split), the biases
`an_bias`, `na_bias` (h, n, 7, 7) trunc-normal(0.02) initialised and bilinearly interpolated to the
grid, the DWC a 3 x 3 depthwise Conv2d(C, C) on v. Left out: the axis biases ah/aw/ha/wa, whose
sizes are tied to one window resolution, and PVT's spatial reduction. The shell's LePE stays on by
default (`lepe=False` gives the paper's layer, whose DWC is the local branch).
Options: agent_num (49; must be a perfect square). Mixer-only: the biases and the DWC are learned.

KV buffer (on the operator module): the agent values V_A, (B, h, n, d) - the fixed-size state all
queries read through their softmax over agents (rank <= min(n, d)).
FLOPs (forward, per batch*head): A K^T 2nNd, (.) V 2nNd, Q A^T 2Nnd, (.) V_A 2Nnd -> 8Nnd; DWC
2 * 9 * N * d; pooling and bias interpolation are not matmuls. fwd_bwd uses 3x.
Bytes: the shell's minimum plus the operator's parameters (q is read twice by a kernel: pooling,
then the broadcast pass; the mixer-level minimum counts x once).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearMixerBase, check_grid, from_map, to_map

CITE = "Han et al., Agent Attention: On the Integration of Softmax and Linear Attention, ECCV 2024"
BIAS_GRID = 7  # the published biases are stored at 7 x 7 and interpolated


class AgentOperator(nn.Module):
    """Agent attention through pooled-query agents; parameters `an_bias`, `na_bias`, `dwc`."""

    def __init__(self, dim: int, num_heads: int, agent_num: int):
        super().__init__()
        pool = math.isqrt(agent_num)
        if pool * pool != agent_num:
            raise ValueError(f"agent_num must be a perfect square (7 x 7 = 49, ...), got {agent_num}")
        self.pool = pool
        self.num_heads = num_heads
        self.an_bias = nn.Parameter(torch.empty(num_heads, agent_num, BIAS_GRID, BIAS_GRID))
        self.na_bias = nn.Parameter(torch.empty(num_heads, agent_num, BIAS_GRID, BIAS_GRID))
        nn.init.trunc_normal_(self.an_bias, std=0.02)
        nn.init.trunc_normal_(self.na_bias, std=0.02)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def agents(self, q: Tensor, grid: tuple[int, int]) -> Tensor:
        """Adaptive average pool of the query map: (B, h, N, d) -> (B, h, n, d)."""
        pooled = F.adaptive_avg_pool2d(to_map(q, grid), (self.pool, self.pool))  # (B, C, p, p)
        return from_map(pooled, self.num_heads)

    def biases(self, grid: tuple[int, int], like: Tensor) -> tuple[Tensor, Tensor]:
        """(B1 (h, n, N), B2 (h, N, n)) interpolated to the grid."""
        heads, n = self.an_bias.shape[:2]
        b1 = F.interpolate(self.an_bias.to(like.dtype), size=grid, mode="bilinear").reshape(heads, n, -1)
        b2 = F.interpolate(self.na_bias.to(like.dtype), size=grid, mode="bilinear").reshape(heads, n, -1)
        return b1, b2.transpose(-2, -1)

    def agent_values(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(agents (B, h, n, d), V_A (B, h, n, d))."""
        scale = q.shape[-1] ** -0.5
        agents = self.agents(q, grid)
        b1, _ = self.biases(grid, q)
        agent_attn = torch.softmax((agents * scale) @ k.transpose(-2, -1) + b1, dim=-1)  # (B, h, n, N)
        return agents, agent_attn @ v

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        return self.agent_values(q, k, v, grid)[1]  # (B, h, n, d)

    def forward(self, q, k, v, *, grid, rope=None):
        check_grid(grid, q.shape[-2])
        scale = q.shape[-1] ** -0.5
        agents, agent_v = self.agent_values(q, k, v, grid)
        _, b2 = self.biases(grid, q)
        q_attn = torch.softmax((q * scale) @ agents.transpose(-2, -1) + b2, dim=-1)  # (B, h, N, n)
        local = from_map(self.dwc(to_map(v, grid)), self.num_heads)  # (B, h, N, d)
        return q_attn @ agent_v + local


@register_mechanism("agent", family="linear", backend="torch", cite=CITE)
class Agent(LinearMixerBase):
    """Agent attention (learned position biases + DWC): mixer only."""

    option_defaults = {"agent_num": 49}

    def build_operator(self, dim, num_heads, *, agent_num):
        return AgentOperator(dim, num_heads, agent_num)

    def operator_flops(self, s: Shape, *, agent_num) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (4 * agent_num * d + 9 * d)

    def operator_params(self, dim, heads, *, agent_num) -> int:
        return 2 * heads * agent_num * BIAS_GRID**2 + dim * 9 + dim
