"""Agent attention (`agent`, mixer-only).

Paper: Han, Ye, Han, Xia, Pan, Wan, Song, Huang, "Agent Attention: On the Integration of Softmax and
Linear Attention", ECCV 2024.

Formula: n agent tokens A = pool(Q) (adaptive average pooling of the query map to sqrt(n) x sqrt(n));
two softmax attentions through the agents, s = 1/sqrt(d):
    V_A = softmax(s A K^T + B1) V          (agent aggregation, n x d)
    out = softmax(s Q A^T + B2) V_A + DWC(V)   (agent broadcast + depthwise conv on v)
B1 (n x N), B2 (N x n) are learned position biases. Checked against LeapLabTHU/Agent-Attention at
207ce3eb, `agent_transformer/models/agent_pvt.py` (AgentAttention): with their weights, the mixer
agrees to fp32 rounding (tests/fixtures/linear/agent.pt). As theirs: the agents pool q over the whole
map before the head split; B1 = an_bias + ah_bias + aw_bias, B2 = na_bias + ha_bias + wa_bias, where
`an_bias`, `na_bias` (h, n, 7, 7) are bilinearly interpolated to the grid and the axis biases
(a row term plus a column term, sized to a window of `window` x `window` tokens) are added; all six
trunc-normal(0.02) initialised; the DWC a 3 x 3 depthwise Conv2d(C, C) on v. At a grid other than
the window the axis biases are linearly interpolated along their axis (our extension: theirs exist at
one resolution only). The mixer is their layer: q/kv projections (the shell's qkv conv), the
operator, the output projection; no LePE, no gate (the shell's `lepe=True` / `gate=True` add them;
the row's `variant` says so). Their Agent-PVT uses no spatial reduction in agent layers (as here).
Options: agent_num (49; a perfect square), window (14). Their PVT configs use agent_num 9, 16, 49, 49
in stages 1-4 (grids 56, 28, 14, 7 at 224 px): e.g. `{agent_num: 9, window: 56}` for stage 1; the
defaults are stage 3's. In a backbone (attnbench.models) each stage's mixer gets its stage's pair
(`stage_options`). Mixer-only: the biases and the DWC are learned.

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
STAGE_AGENTS = (9, 16, 49, 49)  # agent_pvt.py: agent_num per stage
STAGE_WINDOWS = (56, 28, 14, 7)  # the stage grids of a 224 x 224 image (patch 4, then /2 per stage)


def along_axis(bias: Tensor, size: int, dim: int) -> Tensor:
    """A learned per-position bias resized along `dim` to `size` entries (linear interpolation)."""
    if bias.shape[dim] == size:
        return bias
    moved = bias.movedim(dim, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])  # (rest, 1, window)
    resized = F.interpolate(flat, size=size, mode="linear").reshape(*moved.shape[:-1], size)
    return resized.movedim(-1, dim)


class AgentOperator(nn.Module):
    """Agent attention through pooled-query agents; parameters `an_bias`, `na_bias` (h, n, 7, 7), the
    axis biases `ah_bias` (1, h, n, w, 1), `aw_bias` (1, h, n, 1, w), `ha_bias` (1, h, w, 1, n),
    `wa_bias` (1, h, 1, w, n) with w = window, and `dwc`."""

    def __init__(self, dim: int, num_heads: int, agent_num: int, window: int = 14):
        super().__init__()
        pool = math.isqrt(agent_num)
        if pool * pool != agent_num:
            raise ValueError(f"agent_num must be a perfect square (7 x 7 = 49, ...), got {agent_num}")
        self.pool = pool
        self.num_heads = num_heads
        self.an_bias = nn.Parameter(torch.empty(num_heads, agent_num, BIAS_GRID, BIAS_GRID))
        self.na_bias = nn.Parameter(torch.empty(num_heads, agent_num, BIAS_GRID, BIAS_GRID))
        self.ah_bias = nn.Parameter(torch.empty(1, num_heads, agent_num, window, 1))
        self.aw_bias = nn.Parameter(torch.empty(1, num_heads, agent_num, 1, window))
        self.ha_bias = nn.Parameter(torch.empty(1, num_heads, window, 1, agent_num))
        self.wa_bias = nn.Parameter(torch.empty(1, num_heads, 1, window, agent_num))
        for bias in (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias):
            nn.init.trunc_normal_(bias, std=0.02)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def agents(self, q: Tensor, grid: tuple[int, int]) -> Tensor:
        """Adaptive average pool of the query map: (B, h, N, d) -> (B, h, n, d)."""
        pooled = F.adaptive_avg_pool2d(to_map(q, grid), (self.pool, self.pool))  # (B, C, p, p)
        return from_map(pooled, self.num_heads)

    def biases(self, grid: tuple[int, int], like: Tensor) -> tuple[Tensor, Tensor]:
        """(B1 (h, n, N), B2 (h, N, n)) at the grid: interpolated 7 x 7 biases plus the axis biases."""
        heads, n = self.an_bias.shape[:2]
        height, width = grid
        b1 = F.interpolate(self.an_bias.to(like.dtype), size=grid, mode="bilinear").reshape(heads, n, -1)
        b2 = F.interpolate(self.na_bias.to(like.dtype), size=grid, mode="bilinear").reshape(heads, n, -1)
        ah = along_axis(self.ah_bias.to(like.dtype), height, 3)  # (1, h, n, H, 1)
        aw = along_axis(self.aw_bias.to(like.dtype), width, 4)  # (1, h, n, 1, W)
        ha = along_axis(self.ha_bias.to(like.dtype), height, 2)  # (1, h, H, 1, n)
        wa = along_axis(self.wa_bias.to(like.dtype), width, 3)  # (1, h, 1, W, n)
        b1 = b1 + (ah + aw).reshape(heads, n, -1)  # (h, n, N), token = row * W + col
        b2 = b2.transpose(-2, -1) + (ha + wa).reshape(heads, -1, n)  # (h, N, n)
        return b1, b2

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

    option_defaults = {"agent_num": 49, "window": 14}
    upstream = "LeapLabTHU/Agent-Attention@207ce3eb agent_transformer/models/agent_pvt.py"

    def stage_options(self, stage: int) -> dict:
        """Their Agent-PVT configuration of stage `stage` (0-based) at 224 px: agents and window side."""
        return {"agent_num": STAGE_AGENTS[min(stage, 3)], "window": STAGE_WINDOWS[min(stage, 3)]}

    def build_operator(self, dim, num_heads, *, agent_num, window):
        return AgentOperator(dim, num_heads, agent_num, window)

    def operator_flops(self, s: Shape, *, agent_num, window) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (4 * agent_num * d + 9 * d)

    def operator_params(self, dim, heads, *, agent_num, window) -> int:
        return 2 * heads * agent_num * BIAS_GRID**2 + 4 * heads * agent_num * window + dim * 9 + dim
