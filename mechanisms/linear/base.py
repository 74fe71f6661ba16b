"""Shared plumbing of the "linear" family: op/mixer wiring, KV-buffer access, cost bookkeeping.

Every mechanism of the family is one file next to this one. A mechanism provides

- `attention_flops(s, **options)`: forward matmul FLOPs of the parameter-free operator (op level);
- `operator_flops(s, **options)`: forward matmul + conv FLOPs of the mixer's operator (default: the
  same; mixers whose operator owns convs, such as FLatten's depthwise conv, add them);
- `operator_params(dim, heads, **options)`: learned parameters the operator owns (for `bytes`);
- `op_reads`: how many of q, k, v reads the best known kernel needs (3 = each once; 4 = q twice...).

and either `attend` (op level exists; `LinearOpBase`) or `build_operator` (mixer-only; an
nn.Module operator). Costs follow mechanisms/common.py: matmuls and convs only, a multiply-add is
2 FLOPs, fwd_bwd = 3 x fwd, bwd = 2 x fwd (these are all matmul pipelines; none recomputes an N x N score
matrix).

`flops`/`bytes` accept the mechanism's options as keywords (e.g. `features=128` for performer), so
a caller that knows a case's options gets the matching count; without them the defaults apply.

Mixers are the papers' layers by default. The shared shell (`LinearMixer`, a TokenMixer) has the
qkv projection (1x1 conv = the papers' Linear q/kv with bias), the operator and the output
projection; its two extras, the 5x5 LePE on v (`lepe`) and the output gate (`gate`), are off unless
the paper's layer has them (`shell_defaults`, e.g. PolaFormer's gate) or a caller asks for them.
`variant(level, options)` is the row's `variant`: "" for the paper's layer with default options, else
what differs ("+lepe+gate", "features=128").
Operators that read the layer input (InLine's kernel predictor reads the token mean of x) set
`reads_input = True` and get `x=` (B, C, H, W) from the shell. `PvtOperator` holds what the two PVT
layers (FLatten, PolaFormer) share: the learned scale, the positional table on k and the per-head DWC.

KV buffer (read by the rank metrics, attnbench.workloads.rank_inputs): `kv_buffer(q, k, v, *, grid,
rope=None) -> (B, h, r, d)`, the fixed-size state every query reads (r = d for most; 2d, m features,
m landmarks or n agents for some - each file says which). Mixer-only mechanisms expose it on their
operator module instead.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from attnbench.dtypes import DTYPE_BYTES
from attnbench.layers import TokenMixer, merge_heads, split_heads
from attnbench.registry import Mechanism, Shape
from mechanisms.common import check_grid, mixer_bytes, op_bytes, pass_factor, shell_flops

SHELL_OPTIONS = ("gate", "lepe")


class LinearMixer(TokenMixer):
    """The shell of the linear family: TokenMixer (qkvo, lepe, gate, proj) whose operator may also
    read the layer input x, when it sets `reads_input = True` (called with `x=` (B, C, H, W))."""

    def forward(self, x: Tensor, rope=None) -> Tensor:
        _, _, height, width = x.shape
        t = self.qkvo(x)  # (B, 3C or 4C, H, W)
        qkv = t[:, : 3 * self.dim]
        op = self.operator if "operator" in self._modules else self._operator
        q, k, v = split_heads(qkv, 3, self.num_heads)  # (B, h, N, d) each
        extra = {"x": x} if getattr(op, "reads_input", False) else {}
        out = merge_heads(op(q, k, v, grid=(height, width), rope=rope, **extra), height, width)  # (B, C, H, W)
        if self.lepe is not None:
            out = out + self.lepe(qkv[:, 2 * self.dim :])
        if self.gate:
            out = out * t[:, 3 * self.dim :]
        return self.proj(out)


def split_shell_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shell options for TokenMixer: gate/lepe, the mechanism's own options)."""
    shell = {key: options[key] for key in SHELL_OPTIONS if key in options}
    own = {key: value for key, value in options.items() if key not in SHELL_OPTIONS}
    return shell, own


def merge_head_dim(t: Tensor) -> Tensor:
    """(B, h, N, d) -> (B, N, h*d); channel = head*d + j, as the shell's head split."""
    batch, heads, n, head_dim = t.shape
    return t.transpose(1, 2).reshape(batch, n, heads * head_dim)


def split_head_dim(t: Tensor, heads: int) -> Tensor:
    """(B, N, h*d) -> (B, h, N, d); the inverse of `merge_head_dim`."""
    batch, n, channels = t.shape
    return t.reshape(batch, n, heads, channels // heads).transpose(1, 2)


def to_map(t: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, h, N, d) -> (B, h*d, H, W) feature map for depthwise convs (channel = head*d + j)."""
    batch, heads, _, head_dim = t.shape
    return t.transpose(-1, -2).reshape(batch, heads * head_dim, grid[0], grid[1])


def from_map(t: Tensor, heads: int) -> Tensor:
    """(B, h*d, H, W) -> (B, h, N, d); the inverse of `to_map`."""
    batch, channels, height, width = t.shape
    return t.reshape(batch, heads, channels // heads, height * width).transpose(-1, -2)


def mean_kv(kf: Tensor, v: Tensor) -> Tensor:
    """KV = kf^T v / N as (kf^T / sqrt N) @ (v / sqrt N), the order MLLA/FLatten/RALA code uses: (B, h, r, d)."""
    n = kf.shape[-2]
    return (kf.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)


def positional_encoding(table: Tensor, side: int, grid: tuple[int, int]) -> Tensor:
    """A learned absolute positional table (1, side*side, C) at `grid`: itself when grid = (side, side),
    else bilinearly interpolated (as PVT resizes its pos_embed); -> (1, H*W, C)."""
    if tuple(grid) == (side, side):
        return table
    channels = table.shape[-1]
    square = table.reshape(1, side, side, channels).permute(0, 3, 1, 2)  # (1, C, side, side)
    resized = torch.nn.functional.interpolate(square, size=tuple(grid), mode="bilinear")  # (1, C, H, W)
    return resized.flatten(2).transpose(1, 2)


def compute_dtype(t: Tensor) -> torch.dtype:
    """float32 for 16-bit inputs (exp/power feature maps overflow there), else the input's dtype."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class LinearBase(Mechanism):
    """Costs and KV plumbing shared by the family; subclasses implement `mixer` (or use LinearOpBase)."""

    op_reads: int = 3
    option_defaults: dict[str, Any] = {}
    # the paper's layer: which of the shell's extras it has (most have neither)
    shell_defaults: dict[str, bool] = {"gate": False, "lepe": False}
    # the public code this mechanism was checked against: "owner/repo@commit path"
    upstream: str = ""

    def shell(self, options: dict[str, Any]) -> dict[str, bool]:
        """The shell options of a mixer: the paper's (`shell_defaults`) overridden by `options`."""
        shell, _ = split_shell_options(options)
        return {**self.shell_defaults, **{key: bool(value) for key, value in shell.items()}}

    def variant(self, level: str, options: dict[str, Any]) -> str:
        """What a case runs, for the row's `variant`: "" for the paper's layer with the documented option
        defaults; else what differs, space-separated: the shell's extras at mixer level ("+lepe+gate",
        "-gate") and the mechanism's options that differ from their defaults ("features=128")."""
        if level not in ("op", "mixer"):
            return ""
        shell, own = split_shell_options(options)
        parts = []
        if level == "mixer":
            resolved = self.shell(shell)
            parts.append(
                "".join(
                    ("+" if resolved[key] else "-") + key
                    for key in SHELL_OPTIONS
                    if resolved[key] != self.shell_defaults.get(key, False)
                )
            )
        resolved_own = self.resolve(own)
        parts += [f"{key}={resolved_own[key]}" for key in sorted(own) if resolved_own[key] != self.option_defaults[key]]
        return " ".join(part for part in parts if part)

    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(self.option_defaults)
        if unknown:
            known = sorted(self.option_defaults) or "none"
            raise TypeError(f"{self.name}: unknown options {sorted(unknown)} (known: {known}, plus gate, lepe)")
        return {**self.option_defaults, **options}

    # -- costs ----------------------------------------------------------------------------------
    def attention_flops(self, s: Shape, **options: Any) -> float:
        raise NotImplementedError(f"{self.name} has no parameter-free operator")

    def operator_flops(self, s: Shape, **options: Any) -> float:
        return self.attention_flops(s, **options)

    def operator_params(self, dim: int, heads: int, **options: Any) -> int:
        return 0

    def flops(self, s: Shape, *, level: str, pass_: str, **options: Any) -> float:
        shell, own = split_shell_options(options)
        factor = pass_factor(pass_)
        if level == "op":
            if not self.supports("op"):
                raise ValueError(f"{self.name} is mixer-only: no op-level FLOPs")
            return self.attention_flops(s, **self.resolve(own)) * factor
        if level == "mixer":
            return (self.operator_flops(s, **self.resolve(own)) + shell_flops(s, **self.shell(shell))) * factor
        raise ValueError(f"no analytic FLOPs for level {level!r}")

    def bytes(self, s: Shape, *, level: str, dtype: str, **options: Any) -> float:
        shell, own = split_shell_options(options)
        if level == "op":
            if not self.supports("op"):
                raise ValueError(f"{self.name} is mixer-only: no op-level bytes")
            return op_bytes(s, dtype, reads=self.op_reads)
        if level == "mixer":
            extra = self.operator_params(s.dim, s.heads, **self.resolve(own)) * DTYPE_BYTES[dtype]
            return mixer_bytes(s, dtype, **self.shell(shell)) + float(extra)
        raise ValueError(f"no analytic bytes for level {level!r}")


class LinearOpBase(LinearBase):
    """A mechanism with a parameter-free operator `attend(q, k, v, *, grid, **options)` and a KV
    function `state(q, k, v, *, grid, **options)`; the mixer is the shell around the operator."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int], **options: Any) -> Tensor:
        raise NotImplementedError

    def state(self, q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int], **options: Any) -> Tensor:
        raise NotImplementedError

    def op(self, q, k, v, *, grid, **options):  # (B, h, N, d) x3 -> (B, h, N, d)
        _, own = split_shell_options(options)  # gate/lepe configure the mixer's shell, not the operator
        return self.attend(q, k, v, grid=grid, **self.resolve(own))

    def kv_buffer(self, q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int], rope=None, **options) -> Tensor:
        """The state every query reads, (B, h, r, d); `rope` is accepted and unused (no shell RoPE)."""
        _, own = split_shell_options(options)
        return self.state(q, k, v, grid=grid, **self.resolve(own))

    def mixer(self, dim, num_heads, **options):
        _, own = split_shell_options(options)
        operator = self.make_operator(dim, num_heads, **self.resolve(own))
        return LinearMixer(dim, num_heads, operator, **self.shell(options))

    def make_operator(self, dim: int, num_heads: int, **options: Any) -> Callable[..., Tensor] | nn.Module:
        """The mixer's operator; default: `attend` with the options bound, ignoring the shell's RoPE."""
        attend = self.attend

        def operator(q, k, v, *, grid, rope=None):
            return attend(q, k, v, grid=grid, **options)

        return operator


class LinearMixerBase(LinearBase):
    """A mixer-only mechanism: its operator is an nn.Module with learned parts (under `operator.`),
    `forward(q, k, v, *, grid, rope)` and `kv_buffer(q, k, v, *, grid, rope=None)`."""

    def build_operator(self, dim: int, num_heads: int, **options: Any) -> nn.Module:
        raise NotImplementedError

    def mixer(self, dim, num_heads, **options):
        _, own = split_shell_options(options)
        operator = self.build_operator(dim, num_heads, **self.resolve(own))
        return LinearMixer(dim, num_heads, operator, **self.shell(options))


class PvtOperator(nn.Module):
    """What FLatten's and PolaFormer's operators share (both are PVT layers): parameters `scale` (1, 1, C),
    zero-initialised and used as softplus(scale); `dwc`, a depthwise Conv2d(d, d, kernel_size) shared by the
    heads and applied per head to v; `positional_encoding` (1, pos_grid^2, C), zero-initialised, added to k
    (absent when pos_grid = 0). forward = `attention(q, k, v, grid)` + DWC(v); subclasses give `attention`.
    `own`: the subclass's parameters by name (initial values), registered right after `scale`, so that
    parameters() and state_dict() keep the order the layers had: scale, own..., positional_encoding, dwc."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, pos_grid: int, **own: Tensor):
        super().__init__()
        head_dim = dim // num_heads
        self.num_heads = num_heads
        self.pos_grid = pos_grid
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        for name, value in own.items():
            self.register_parameter(name, nn.Parameter(value))
        self.dwc = nn.Conv2d(head_dim, head_dim, kernel_size, padding=kernel_size // 2, groups=head_dim)
        if pos_grid:
            self.positional_encoding = nn.Parameter(torch.zeros(1, pos_grid * pos_grid, dim))

    @staticmethod
    def param_count(dim: int, heads: int, kernel_size: int, pos_grid: int) -> int:
        """Parameters of the shared parts: scale, dwc weight and bias, positional table."""
        head_dim = dim // heads
        return dim + head_dim * kernel_size**2 + head_dim + pos_grid * pos_grid * dim

    def softplus_scale(self, dtype: torch.dtype) -> Tensor:
        return torch.nn.functional.softplus(self.scale.to(dtype))  # (1, 1, C)

    def with_positions(self, k_merged: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N, C) keys + the positional table at `grid` in their dtype (their `k = k + positional_encoding`)."""
        if not self.pos_grid:
            return k_merged
        return k_merged + positional_encoding(self.positional_encoding.to(k_merged.dtype), self.pos_grid, grid)

    def local(self, v: Tensor, grid: tuple[int, int]) -> Tensor:
        """DWC(V): the conv on each head's (d, H, W) map of v; (B, h, N, d) -> (B, h, N, d)."""
        batch, heads, _, head_dim = v.shape
        v_map = to_map(v.reshape(batch * heads, 1, -1, head_dim), grid)  # (B*h, d, H, W)
        return from_map(self.dwc(v_map), 1).reshape(batch, heads, -1, head_dim)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        raise NotImplementedError

    def forward(self, q, k, v, *, grid, rope=None):
        check_grid(grid, q.shape[-2])
        return self.attention(q, k, v, grid) + self.local(v, grid)
