"""Parameter, MAC and FLOP counts of RAVLT: analytic (from the config) and counted (from a forward).

Three labelled counts (docs/rala.md, "RAVLT"), all of one forward, per batch of `batch` images:

- `macs_no_attn`: multiply-accumulates of every convolution (bias excluded; depthwise counted per
  group) plus the normalisation layers in fvcore's inference convention (BatchNorm 2 per element,
  LayerNorm 5 per element, average pool 1 per input element); the attention matmuls are left out.
  This is the count the paper's FLOPs column sits closest to (within ~2% for all four variants).
- `macs_with_attn`: the same plus the attention matmuls (RALA: qbar.k, q.mean(k), K^T V, Q KV;
  softmax: Q K^T, P V), i.e. fvcore's FlopCountAnalysis, which the authors' training code uses.
- `flops`: torch FlopCounterMode's convention: 2 FLOPs per multiply-add of convolutions and matmuls
  only (no norms, no biases, no elementwise work) = 2 x (conv MACs + attention matmul MACs).
  It equals 2 x macs_with_attn minus the norm terms (~0.2% at 224).

Analytically the mixers' share comes from their mechanism's `flops(level="mixer")` (the
mechanisms' convention, mechanisms/common.py: 2 FLOPs per matmul/conv MAC, fwd_bwd = 3x, softmax
cores 3.5x; the backward alone, pass bwd, = fwd_bwd - fwd), split into the published shell (qkvo, lepe,
proj convs) and the attention core. Backbone convs follow the same fwd_bwd = 3x (bwd 2x) rule (it
slightly overstates the stem's first conv, whose input needs no gradient; norm backward is not counted,
as in FlopCounterMode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor, nn

from attnbench.measure.flops import count_flops_by_op
from attnbench.models.ravlt import (
    DEFAULT_MIXER,
    DEFAULT_MIXER_LATE,
    RAVLT,
    MixerSpec,
    RavltConfig,
    ravlt_config,
    resolve_mechanism,
)
from attnbench.registry import Shape

BN_MACS_PER_ELEMENT = 2  # fvcore, BatchNorm in eval mode with affine parameters
LN_MACS_PER_ELEMENT = 5  # fvcore, LayerNorm with affine parameters
POOL_MACS_PER_ELEMENT = 1  # fvcore, adaptive average pool (per input element)
BACKBONE_FWD_BWD = 3.0  # mechanisms/common.py: a conv's backward costs 2x its forward

ConfigLike = Union[str, RavltConfig]


@dataclass(frozen=True)
class ModelCounts:
    """Counts of one forward of `batch` images at height x width (see the module docstring)."""

    macs_no_attn: float
    macs_with_attn: float
    flops: float  # FlopCounterMode convention

    @property
    def attn_macs(self) -> float:
        return self.macs_with_attn - self.macs_no_attn


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics and RoPE angles excluded)."""
    return sum(p.numel() for p in model.parameters())


def _config(model: ConfigLike) -> RavltConfig:
    return ravlt_config(model) if isinstance(model, str) else model


def _down(n: int) -> int:
    """Output size of a 3x3 stride-2 conv with padding 1."""
    return (n - 1) // 2 + 1


def stage_grids(height: int, width: int, stages: int = 4) -> list[tuple[int, int]]:
    """Token grid (H_i, W_i) of each stage: /4 after the stem, then /2 per downsample."""
    h, w = _down(_down(height)), _down(_down(width))
    grids = []
    for _ in range(stages):
        grids.append((h, w))
        h, w = _down(h), _down(w)
    return grids


def shell_macs(tokens: int, dim: int) -> int:
    """The published mixer shell's convs: qkvo (C->4C), 5x5 depthwise lepe, proj (C->C)."""
    return tokens * (4 * dim * dim + 25 * dim + dim * dim)


def _backbone(cfg: RavltConfig, height: int, width: int) -> tuple[int, int]:
    """(conv MACs outside the mixers, norm/pool MACs) of one image."""
    c0, half = cfg.embed_dims[0], cfg.embed_dims[0] // 2
    h1, w1 = _down(height), _down(width)
    h2, w2 = _down(h1), _down(w1)
    conv = h1 * w1 * 9 * (cfg.in_chans * half + 2 * half * half) + h2 * w2 * 9 * half * c0  # stem
    norm = BN_MACS_PER_ELEMENT * (3 * half * h1 * w1 + c0 * h2 * w2)
    grids = stage_grids(height, width, len(cfg.depths))
    for i, ((h, w), c, f, depth) in enumerate(zip(grids, cfg.embed_dims, cfg.ffn_dims(), cfg.depths)):
        n = h * w
        per_block = n * (9 * c + 2 * c * f + 9 * f)  # pos dwconv, fc1, fc2, ffn dwconv
        conv += depth * per_block
        norm += depth * LN_MACS_PER_ELEMENT * 2 * n * c  # norm1, norm2
        if i + 1 < len(grids):
            c_next, (hn, wn) = cfg.embed_dims[i + 1], grids[i + 1]
            conv += hn * wn * 9 * c * c_next
            norm += BN_MACS_PER_ELEMENT * c_next * hn * wn
    (h, w), p = grids[-1], cfg.projection
    conv += h * w * cfg.embed_dims[-1] * p + p * cfg.num_classes  # proj, head (after the pool)
    norm += (BN_MACS_PER_ELEMENT + POOL_MACS_PER_ELEMENT) * p * h * w
    return conv, norm


def _mixer_stages(cfg: RavltConfig, height: int, width: int, batch: int, mixer: MixerSpec, mixer_late: MixerSpec):
    """(depth, mixer Shape, mechanism) of each stage: `mixer` in stages 1-2, `mixer_late` in 3-4 (as RAVLT builds)."""
    early, late = resolve_mechanism(mixer, DEFAULT_MIXER), resolve_mechanism(mixer_late, DEFAULT_MIXER_LATE)
    for i, ((h, w), c, heads, depth) in enumerate(
        zip(stage_grids(height, width, len(cfg.depths)), cfg.embed_dims, cfg.num_heads, cfg.depths)
    ):
        shape = Shape(batch=batch, heads=heads, height=h, width=w, head_dim=c // heads, dim=c)
        yield depth, shape, early if i < 2 else late


def analytic_counts(
    model: ConfigLike,
    height: int,
    width: int,
    *,
    batch: int = 1,
    mixer: MixerSpec = None,
    mixer_late: MixerSpec = None,
) -> ModelCounts:
    """The three forward counts from the config and the mechanisms' mixer-level flops()."""
    cfg = _config(model)
    conv, norm = _backbone(cfg, height, width)
    shell, attn = 0.0, 0.0
    for depth, s, mech in _mixer_stages(cfg, height, width, 1, mixer, mixer_late):
        mixer_macs = mech.flops(s, level="mixer", pass_="fwd") / 2
        own = shell_macs(s.tokens, s.dim)
        shell += depth * own
        attn += depth * (mixer_macs - own)
    no_attn = batch * (conv + shell + norm)
    return ModelCounts(
        macs_no_attn=float(no_attn),
        macs_with_attn=float(no_attn + batch * attn),
        flops=float(2 * batch * (conv + shell + attn)),
    )


def model_flops(
    model: ConfigLike,
    height: int,
    width: int,
    *,
    batch: int = 1,
    mixer: MixerSpec = None,
    mixer_late: MixerSpec = None,
    pass_: str = "fwd",
) -> float:
    """Analytic FLOPs (FlopCounterMode convention) of one forward (pass_ fwd), forward + backward (fwd_bwd) or
    backward alone (bwd) of `batch` images."""
    backbone = {"fwd": 1.0, "fwd_bwd": BACKBONE_FWD_BWD, "bwd": BACKBONE_FWD_BWD - 1.0}
    if pass_ not in backbone:
        raise ValueError(f"unknown pass {pass_!r} (fwd | fwd_bwd | bwd)")
    cfg = _config(model)
    conv, _ = _backbone(cfg, height, width)
    total = 2.0 * batch * conv * backbone[pass_]
    for depth, s, mech in _mixer_stages(cfg, height, width, batch, mixer, mixer_late):
        total += depth * mech.flops(s, level="mixer", pass_=pass_)
    return total


def count_model(model: nn.Module, height: int, width: int, *, batch: int = 1) -> ModelCounts:
    """The three counts measured on one eval-mode forward of `model` (FlopCounterMode + norm hooks).

    Runs on the model's device and dtype with a zeros input; on the meta device it costs nothing,
    so build big models there for counting: `with torch.device("meta"): m = create_ravlt(...)`.
    """
    param = next(model.parameters())
    x = torch.zeros(
        batch,
        getattr(getattr(model, "config", None), "in_chans", 3),
        height,
        width,
        device=param.device,
        dtype=param.dtype,
    )  # (B, 3, H, W)
    norm = [0]

    def hook(per_element: int):
        def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            norm[0] += per_element * inputs[0].numel()

        return count

    costs = {
        nn.BatchNorm2d: BN_MACS_PER_ELEMENT,
        nn.LayerNorm: LN_MACS_PER_ELEMENT,
        nn.AdaptiveAvgPool2d: POOL_MACS_PER_ELEMENT,
    }
    handles = [
        m.register_forward_hook(hook(cost)) for m in model.modules() for kind, cost in costs.items() if type(m) is kind
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            by_op = count_flops_by_op(lambda: model(x))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    conv = by_op.get("convolution", 0) / 2
    matmul = sum(v for k, v in by_op.items() if k != "convolution") / 2
    return ModelCounts(macs_no_attn=conv + norm[0], macs_with_attn=conv + matmul + norm[0], flops=2 * (conv + matmul))


def meta_model(name_or_config: ConfigLike, *, mixer: MixerSpec = None, mixer_late: MixerSpec = None) -> RAVLT:
    """The model on the meta device (no memory, no init cost): for counting and key/shape checks."""
    cfg = _config(name_or_config)
    with torch.device("meta"):
        return RAVLT.from_config(cfg, mixer=mixer, mixer_late=mixer_late)
