"""MLLA, Mamba-like linear attention (`mlla`).

Paper: Han, Wang, Xia, Han, Pu, Lv, Song, Huang, "Demystify Mamba in Vision: A Linear Attention
Perspective", NeurIPS 2024.

Formula, phi(t) = ELU(t) + 1, R = MLLA's 2D rotary embedding:
    out_n = R(phi(q_n))^T KV / (phi(q_n) . mean_m phi(k_m) + 1e-6),  KV = mean_m R(phi(k_m)) v_m^T.
(The normaliser uses the un-rotated features; RALA is this plus query-aware token weights.)
Checked against LeapLabTHU/MLLA at 66b6d297, `models/mlla.py` (LinearAttention, RoPE, MLLABlock):
op and mixer agree to fp32 rounding (tests/fixtures/linear/mlla.pt). As theirs: the rotation acts
on the full C = h*d channels *before* the head split, channel pairs (2j, 2j+1) rotated as complex
numbers by angle_j, with k_max = C/4, theta_t = 10000^(-t/k_max), angle_j = row * theta_j for
j < k_max and col * theta_(j - k_max) otherwise (tokens row-major). This differs from RALA's
per-head Rope2d (docs/rala.md), so MLLA ignores the shell's tables and builds its own (float32, as their buffer;
float64 for float64 inputs). KV as (K^T / sqrt N) @ (V / sqrt N), as their code.

The mixer is MLLA's token mixer, MLLABlock from norm1's output to the residual add (`MllaLayer`):
    g = SiLU(act_proj(x)),  h = SiLU(dwc3x3(in_proj(x))),  q, k = qk(h),  v = h,
    y = out_proj((attention(q, k, v) + lepe3x3(v)) * g)
(in/act/out projections and qk with bias; the block's cpe convs, norms and MLP are not the mixer).
Passing either shell option (`gate=`, `lepe=`) builds the shared shell around the op instead
(qkvo, 5x5 LePE on v, un-activated gate, proj); its rows carry the variant "shell" plus "+gate", "+lepe".

KV buffer: mean_m R(phi(k_m)) v_m^T, (B, h, d, d).
FLOPs (forward, per batch*head): KV 2Nd^2, output 2Nd^2, normaliser 2Nd -> 4Nd^2 + 2Nd.
Bytes: q, k, v read once, out written once.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.dtypes import DTYPE_BYTES
from attnbench.layers import apply_rope, merge_heads, split_heads
from attnbench.registry import Shape, register_mechanism
from mechanisms.common import pass_factor
from mechanisms.linear.base import (
    LinearMixer,
    LinearOpBase,
    check_grid,
    mean_kv,
    merge_head_dim,
    split_head_dim,
    split_shell_options,
)
from mechanisms.linear.linear_elu import elu_feature

CITE = "Han et al., Demystify Mamba in Vision: A Linear Attention Perspective, NeurIPS 2024"


@functools.lru_cache(maxsize=32)
def _mlla_tables(height: int, width: int, channels: int, build: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    if channels % 4:
        raise ValueError(f"MLLA's 2D RoPE needs h*d divisible by 4, got {channels}")
    k_max = channels // 4
    theta = 1.0 / (10000 ** (torch.arange(k_max, dtype=build, device=device) / k_max))  # (C/4,)
    rows = torch.arange(height, dtype=build, device=device)[:, None, None].expand(height, width, 1)
    cols = torch.arange(width, dtype=build, device=device)[None, :, None].expand(height, width, 1)
    angles = torch.cat([rows * theta, cols * theta], dim=-1).reshape(height * width, channels // 2)  # (N, C/2)
    angles = angles.repeat_interleave(2, dim=-1)  # (N, C): pair j -> channels 2j, 2j+1
    return angles.sin(), angles.cos()


def mlla_tables(grid: tuple[int, int], channels: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """MLLA's (sin, cos), each (N, C), built in float32 (float64 for float64 inputs), cast to like's dtype."""
    build = torch.float64 if like.dtype == torch.float64 else torch.float32
    sin, cos = _mlla_tables(grid[0], grid[1], channels, build, str(like.device))
    return sin.to(like.dtype), cos.to(like.dtype)


def mlla_rope(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """MLLA's rotation on the merged channels of x (B, h, N, d) -> (B, h, N, d)."""
    merged = merge_head_dim(x)  # (B, N, C)
    sin, cos = mlla_tables(grid, merged.shape[-1], x)
    return split_head_dim(apply_rope(merged, sin, cos), x.shape[1])


def mlla_attention(q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
    """MLLA's linear attention with its RoPE: (B, h, N, d) x3 -> (B, h, N, d)."""
    q, k = elu_feature(q), elu_feature(k)  # (B, h, N, d)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, h, N, 1)
    return mlla_rope(q, grid) @ mean_kv(mlla_rope(k, grid), v) * z


class MllaLayer(nn.Module):
    """MLLA's token mixer (MLLABlock between norm1 and the residual): forward(x, rope) with x
    (B, C, H, W); `rope` is ignored (MLLA builds its own). Parameters in_proj, act_proj, dwc, qk,
    lepe, out_proj (1x1 convs = their Linear layers)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.in_proj = nn.Conv2d(dim, dim, 1)
        self.act_proj = nn.Conv2d(dim, dim, 1)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.qk = nn.Conv2d(dim, 2 * dim, 1)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.out_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, rope=None) -> Tensor:
        _, _, height, width = x.shape
        gate = F.silu(self.act_proj(x))  # (B, C, H, W)
        h = F.silu(self.dwc(self.in_proj(x)))  # (B, C, H, W)
        q, k = split_heads(self.qk(h), 2, self.num_heads)  # (B, h, N, d) each
        v = split_heads(h, 1, self.num_heads)[0]  # (B, h, N, d)
        out = merge_heads(mlla_attention(q, k, v, (height, width)), height, width) + self.lepe(h)
        return self.out_proj(out * gate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


def layer_params(dim: int) -> int:
    """Parameters of MllaLayer: four C x C 1x1 convs (qk counts twice) with biases, two 3 x 3 DWCs."""
    return 4 * (dim * dim + dim) + (dim * dim + dim) + 2 * (9 * dim + dim)


@register_mechanism("mlla", family="linear", backend="torch", cite=CITE)
class Mlla(LinearOpBase):
    """MLLA linear attention: phi = ELU + 1 with MLLA's full-channel 2D RoPE; op and mixer (MLLA's layer)."""

    shell_defaults: dict[str, bool] = {}  # the paper's layer is MllaLayer, not the shared shell
    upstream = "LeapLabTHU/MLLA@66b6d297 models/mlla.py"

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        return mlla_attention(q, k, v, grid)

    def mixer(self, dim, num_heads, **options):
        shell, own = split_shell_options(options)
        self.resolve(own)
        if not shell:
            return MllaLayer(dim, num_heads)
        full = {"gate": True, "lepe": True, **{key: bool(value) for key, value in shell.items()}}
        return LinearMixer(dim, num_heads, self.make_operator(dim, num_heads), **full)

    def shell(self, options):
        shell, _ = split_shell_options(options)
        return {"gate": True, "lepe": True, **{key: bool(value) for key, value in shell.items()}} if shell else {}

    def variant(self, level, options):
        shell = self.shell(options)
        if level != "mixer" or not shell:
            return ""
        return "shell" + "".join(f"+{key}" for key in ("gate", "lepe") if shell[key])

    def flops(self, s: Shape, *, level: str, pass_: str, **options) -> float:
        shell = self.shell(options)
        if level != "mixer" or shell:
            return super().flops(s, level=level, pass_=pass_, **options)
        tokens, c = s.batch * s.tokens, s.dim
        layer = 2.0 * tokens * (5 * c * c + 2 * 9 * c)  # in/act/out projections, qk (2C), two 3x3 DWCs
        return (self.attention_flops(s) + layer) * pass_factor(pass_)

    def bytes(self, s: Shape, *, level: str, dtype: str, **options) -> float:
        if level != "mixer" or self.shell(options):
            return super().bytes(s, level=level, dtype=dtype, **options)
        return float((2 * s.batch * s.tokens * s.dim + layer_params(s.dim)) * DTYPE_BYTES[dtype])

    def state(self, q, k, v, *, grid):
        return mean_kv(mlla_rope(elu_feature(k), grid), v)  # (B, h, d, d)

    def attention_flops(self, s: Shape) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (2 * d * d + d)
