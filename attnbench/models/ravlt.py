"""RAVLT, the RALA vision backbone (docs/rala.md, "RAVLT"), with swappable token mixers.

State_dict keys, shapes and numerics equal the authors' published classification model, so the
released ImageNet checkpoints load strictly and reproduce its outputs. The token mixers come from
the mechanism registry: stages 1-2 use `mixer` (default `rala_eager`), stages 3-4 `mixer_late`
(default `softmax_eager`); with both defaults this is exactly the published model.

Layout (keys):
  patch_embed.proj.{0,3,6,9} Conv3x3 (+bias), {1,4,7,10} BatchNorm2d, GELU between   (B, C0, H/4, W/4)
  layers.<i>.RoPE.angle                           one Rope2d per stage, shared by its blocks
  layers.<i>.blocks.<j>.{gamma_1, gamma_2, pos, norm1.norm, attn.*, norm2.norm, ffn.{fc1,fc2,dwconv}}
  layers.<i>.downsample.{reduction, norm}         i < 3: Conv3x3 s2 + BatchNorm2d  (B, C_{i+1}, H/2, W/2)
  proj (Conv1x1 -> projection), norm (BatchNorm2d), Swish, global average pool, head (Conv1x1)
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, replace
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.errors import AttnbenchError
from attnbench.layers import Rope2d, RopeTables
from attnbench.registry import Mechanism

MixerSpec = Union[str, Mechanism, None]  # a registered name, a Mechanism instance, or None (published default)
DEFAULT_MIXER = "rala_eager"  # stages 1-2 of the published model
DEFAULT_MIXER_LATE = "softmax_eager"  # stages 3-4 of the published model


@dataclass(frozen=True)
class RavltConfig:
    """The published constructor's configuration (one entry per stage where it is a tuple)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...] = (3.5, 3.5, 3.5, 3.5)
    drop_path_rate: float = 0.1
    projection: int = 1024
    layerscales: tuple[bool, ...] = (True, True, True, True)
    layer_init_values: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    num_classes: int = 1000
    in_chans: int = 3

    def head_dims(self) -> tuple[int, ...]:
        return tuple(c // h for c, h in zip(self.embed_dims, self.num_heads))

    def ffn_dims(self) -> tuple[int, ...]:
        return tuple(int(r * c) for r, c in zip(self.mlp_ratios, self.embed_dims))


# docs/rala.md "RAVLT" table (= the authors' RAVLT_T/S/B/L factories)
RAVLT_CONFIGS: dict[str, RavltConfig] = {
    "ravlt_t": RavltConfig((64, 128, 256, 512), (2, 2, 6, 2), (1, 2, 4, 8), drop_path_rate=0.1),
    "ravlt_s": RavltConfig((64, 128, 320, 512), (3, 5, 9, 3), (1, 2, 5, 8), drop_path_rate=0.15),
    "ravlt_b": RavltConfig(
        (96, 192, 384, 512), (4, 6, 12, 6), (1, 2, 6, 8), drop_path_rate=0.4, layer_init_values=(1.0, 1.0, 1e-6, 1e-6)
    ),
    "ravlt_l": RavltConfig(
        (96, 192, 448, 640), (4, 7, 19, 8), (1, 2, 7, 10), drop_path_rate=0.55, layer_init_values=(1e-6,) * 4
    ),
}


def ravlt_config(name: str) -> RavltConfig:
    """The config of a published variant; unknown names raise AttnbenchError naming close matches."""
    try:
        return RAVLT_CONFIGS[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), list(RAVLT_CONFIGS), n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AttnbenchError(f"unknown model {name!r}{hint} (known: {', '.join(RAVLT_CONFIGS)})") from None


def resolve_mechanism(spec: MixerSpec, default: str) -> Mechanism:
    """A Mechanism from a registered name, an instance, or None (-> `default`); names are looked up in the
    registry, whose first lookup loads the built-in mechanisms (`attnbench.registry.get`)."""
    if isinstance(spec, Mechanism):
        return spec
    from attnbench.registry import get

    return get(spec or default)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p, scale the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of (B, C, H, W), computed channels-last (key `norm.*`)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B,C,H,W) -> (B,H,W,C) -> back


class FeedForward(nn.Module):
    """fc1 (C->F), GELU, h + dwconv3x3(h), fc2 (F->C); keys registered in the published order."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc1(x))  # (B, F, H, W)
        h = h + self.dwconv(h)
        return self.fc2(h)  # (B, C, H, W)


class Block(nn.Module):
    """x += pos(x); x += drop(g1 * attn(norm1(x), rope)); x += drop(g2 * ffn(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        mechanism: Mechanism,
        *,
        drop_path: float = 0.0,
        layerscale: bool = False,
        layer_init_value: float = 1e-6,
        stage: int = 0,
    ):
        super().__init__()
        self.layerscale = layerscale
        self.norm1 = LayerNorm2d(dim)
        stage_options = getattr(mechanism, "stage_options", None)
        self.attn = mechanism.mixer(dim, num_heads, **(stage_options(stage) if stage_options else {}))
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = FeedForward(dim, ffn_dim)
        self.pos = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        if layerscale:
            self.gamma_1 = nn.Parameter(layer_init_value * torch.ones(1, dim, 1, 1))
            self.gamma_2 = nn.Parameter(layer_init_value * torch.ones(1, dim, 1, 1))

    def forward(self, x: Tensor, rope: RopeTables) -> Tensor:
        x = x + self.pos(x)  # (B, C, H, W)
        a = self.attn(self.norm1(x), rope)
        x = x + self.drop_path(self.gamma_1 * a if self.layerscale else a)
        f = self.ffn(self.norm2(x))
        return x + self.drop_path(self.gamma_2 * f if self.layerscale else f)


class Downsample(nn.Module):
    """Conv3x3 stride 2 (C_i -> C_{i+1}) + BatchNorm2d: (B, C_i, H, W) -> (B, C_{i+1}, H/2, W/2)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x))


class Stage(nn.Module):
    """One stage: its RoPE (built once per forward, shared by all blocks), blocks, optional downsample."""

    def __init__(
        self,
        dim: int,
        out_dim: int | None,
        depth: int,
        num_heads: int,
        ffn_dim: int,
        mechanism: Mechanism,
        *,
        drop_paths: Sequence[float],
        layerscale: bool,
        layer_init_value: float,
        stage: int = 0,
    ):
        super().__init__()
        self.RoPE = Rope2d(dim // num_heads)
        self.blocks = nn.ModuleList(
            Block(
                dim,
                num_heads,
                ffn_dim,
                mechanism,
                drop_path=drop_paths[j],
                layerscale=layerscale,
                layer_init_value=layer_init_value,
                stage=stage,
            )
            for j in range(depth)
        )
        self.downsample = Downsample(dim, out_dim) if out_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:
        rope = self.RoPE((x.shape[-2], x.shape[-1]))  # (sin, cos), each (H*W, head_dim)
        for blk in self.blocks:
            x = blk(x, rope)
        return self.downsample(x) if self.downsample is not None else x


def stem(in_chans: int, dim: int) -> nn.Sequential:
    """Four 3x3 convs (s2, s1, s1, s2) with BatchNorm, GELU between: (B, 3, H, W) -> (B, C0, H/4, W/4)."""
    half = dim // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, half, 3, 2, 1),
        nn.BatchNorm2d(half),
        nn.GELU(),
        nn.Conv2d(half, half, 3, 1, 1),
        nn.BatchNorm2d(half),
        nn.GELU(),
        nn.Conv2d(half, half, 3, 1, 1),
        nn.BatchNorm2d(half),
        nn.GELU(),
        nn.Conv2d(half, dim, 3, 2, 1),
        nn.BatchNorm2d(dim),
    )


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.proj = stem(in_chans, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class RAVLT(nn.Module):
    """The RAVLT backbone. Arguments as the published constructor, plus `mixer` / `mixer_late`.

    forward(x): x (B, in_chans, H, W) -> logits (B, num_classes) (pooled features (B, projection)
    when num_classes == 0). Any H, W works; multiples of 32 keep every stage's grid exact.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mlp_ratios: Sequence[float] = (3, 3, 3, 3),
        drop_path_rate: float = 0.1,
        projection: int = 1024,
        layerscales: Sequence[bool] = (False, False, False, False),
        layer_init_values: Sequence[float] = (1e-6, 1e-6, 1e-6, 1e-6),
        mixer: MixerSpec = None,
        mixer_late: MixerSpec = None,
    ):
        super().__init__()
        self.config = RavltConfig(
            tuple(embed_dims),
            tuple(depths),
            tuple(num_heads),
            tuple(float(r) for r in mlp_ratios),
            float(drop_path_rate),
            int(projection),
            tuple(bool(s) for s in layerscales),
            tuple(float(v) for v in layer_init_values),
            int(num_classes),
            int(in_chans),
        )
        early = resolve_mechanism(mixer, DEFAULT_MIXER)
        late = resolve_mechanism(mixer_late, DEFAULT_MIXER_LATE)
        self.mixer_names = (early.name, late.name)
        self.num_classes = num_classes
        num_stages = len(depths)
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # linear ramp over blocks
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            start = sum(depths[:i])
            self.layers.append(
                Stage(
                    embed_dims[i],
                    embed_dims[i + 1] if i < num_stages - 1 else None,
                    depths[i],
                    num_heads[i],
                    int(mlp_ratios[i] * embed_dims[i]),
                    early if i < 2 else late,
                    drop_paths=rates[start : start + depths[i]],
                    layerscale=bool(layerscales[i]),
                    layer_init_value=float(layer_init_values[i]),
                    stage=i,
                )
            )
        self.proj = nn.Conv2d(embed_dims[-1], projection, 1)
        self.norm = nn.BatchNorm2d(projection)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(projection, num_classes, 1) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @classmethod
    def from_config(cls, config: RavltConfig, *, mixer: MixerSpec = None, mixer_late: MixerSpec = None) -> RAVLT:
        return cls(**asdict(config), mixer=mixer, mixer_late=mixer_late)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # (B, C0, H/4, W/4)
        for layer in self.layers:
            x = layer(x)  # (B, C3, H/32, W/32) after the last stage
        x = self.norm(self.proj(x))  # (B, P, H/32, W/32)
        x = x * torch.sigmoid(x)  # Swish
        return self.avgpool(x)  # (B, P, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x)).flatten(1)  # (B, classes)


def _init_weights(m: nn.Module) -> None:
    """Spec init: conv weights truncated normal (std 0.02, cut at +-2), conv biases 0, LayerNorm 1/0."""
    if isinstance(m, nn.Conv2d):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def create_ravlt(
    name: str,
    mixer: MixerSpec = None,
    mixer_late: MixerSpec = None,
    num_classes: int = 1000,
    drop_path_rate: float | None = None,
) -> RAVLT:
    """A published variant (`ravlt_t`, `ravlt_s`, `ravlt_b`, `ravlt_l`), optionally with swapped mixers."""
    config = replace(ravlt_config(name), num_classes=num_classes)
    if drop_path_rate is not None:
        config = replace(config, drop_path_rate=float(drop_path_rate))
    return RAVLT.from_config(config, mixer=mixer, mixer_late=mixer_late)
