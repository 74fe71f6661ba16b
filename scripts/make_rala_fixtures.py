"""Produce tests/fixtures/rala/rala_reference_outputs.pt: the authors' published RALA/RAVLT modules run on
seeded weights and inputs.

Usage (--src names the authors' classification model file; none of their code is part of this project):

    PYTHONPATH=$PWD:<dir with einops> python scripts/make_rala_fixtures.py --src RALA/classfication/RALA.py

Their file imports timm, fvcore and einops. timm and fvcore are used only for parts we do not run (drop
path in training, weight init, model registration, FLOP counting); where they are missing a stub module
stands in (printed). einops must be importable (pure Python).

The file holds (tests/fixtures/rala/README.md describes it for a reader of the tests):
- "mixers": {name: {"dim", "heads", "state_dict", "angle", "x", "y"}} for their RALA token mixer
  (`GateLinearAttentionNoSilu`) at 64 channels x 1 head on a 7x9 grid and 192 x 2 on 5x11, and their
  softmax token mixer (`VanillaSelfAttention`) at 128 x 2 on 6x6; "angle" is the RoPE buffer their
  `RoPE(dim, heads)` builds, x (2, C, H, W) the input, y their output for it;
- "ravlt_small": {"config", "state_dict", "x", "logits"}: their `RAVLT(**config)` with every state_dict
  entry given a seeded value (their key order), x (2, 3, 64, 96) and its logits (2, 10);
- "upstream": repository@commit path of the file that produced it.
Weights are N(0, 1/fan_in), biases N(0, 0.1^2), norm scales 1 + N(0, 0.1^2), layer scales (gamma_1,
gamma_2) 1 + N(0, 0.25^2), BatchNorm running means N(0, 0.1^2) and variances U(0.5, 1.5), so that every
term of the forward pass moves the output and the logits depend on the image. Parameters are drawn in float32, the
modules run in float64 (eval mode) on them, and outputs are stored as float32.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import sys
import types
import zlib
from pathlib import Path

import torch
from torch import nn
from upstream_stubs import stub_module

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "rala" / "rala_reference_outputs.pt"
UPSTREAM = "qhfan/RALA@a86314f6 classfication/RALA.py"
BATCH = 2

# name: (their class, channels, heads, grid)
MIXERS = {
    "rala_64x1": ("GateLinearAttentionNoSilu", 64, 1, (7, 9)),
    "rala_192x2": ("GateLinearAttentionNoSilu", 192, 2, (5, 11)),
    "softmax_128x2": ("VanillaSelfAttention", 128, 2, (6, 6)),
}
# a small RAVLT: four stages (RALA in 1-2, softmax in 3-4), layer scale on everywhere, 10 classes
RAVLT_SMALL = {
    "embed_dims": [32, 64, 128, 128],
    "depths": [1, 2, 1, 1],
    "num_heads": [1, 1, 2, 2],
    "mlp_ratios": [3.5, 3.5, 3.5, 3.5],
    "drop_path_rate": 0.1,
    "projection": 256,
    "layerscales": [True, True, True, True],
    "layer_init_values": [1.0, 1.0, 1e-6, 1e-6],
    "num_classes": 10,
}
RAVLT_IMAGE = (64, 96)  # stage grids 16x24, 8x12, 4x6, 2x3


# -- loading the authors' file -------------------------------------------------------------------------
class _DropPath(nn.Identity):
    """Stands in for timm's DropPath, which is the identity in eval mode (the only mode run here)."""

    def __init__(self, *args, **kwargs):
        super().__init__()


def install_stubs() -> None:
    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)

    def unused(*args, **kwargs):
        raise RuntimeError("not needed to make the fixtures")

    stub_module("timm.models.layers", DropPath=_DropPath, trunc_normal_=trunc_normal_)
    stub_module("timm.models.registry", register_model=lambda fn: fn)
    stub_module("timm.models.vision_transformer", _cfg=lambda **kwargs: kwargs)
    stub_module("fvcore.nn", FlopCountAnalysis=unused, flop_count_table=unused)


def load_file(path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("upstream_rala", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["upstream_rala"] = module
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(module)
    return module


# -- seeded values ----------------------------------------------------------------------------------------
def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) % 2**31


def gaussian(shape, gen: torch.Generator, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    return mean + std * torch.randn(*shape, generator=gen, dtype=torch.float32)


def value_of(key: str, current: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The seeded value of one state_dict entry (float32); buffers that are not statistics keep theirs."""
    leaf = key.split(".")[-1]
    shape = tuple(current.shape)
    if leaf in ("angle", "num_batches_tracked"):
        return current.clone()  # the RoPE buffer is derived from the configuration, not learned
    if leaf == "running_mean":
        return gaussian(shape, gen, std=0.1)
    if leaf == "running_var":
        return 0.5 + torch.rand(*shape, generator=gen, dtype=torch.float32)
    if leaf in ("gamma_1", "gamma_2"):
        return gaussian(shape, gen, mean=1.0, std=0.25)
    if leaf == "weight" and current.dim() >= 2:
        fan_in = current[0].numel()
        return gaussian(shape, gen, std=fan_in**-0.5)
    if leaf == "weight":  # BatchNorm and LayerNorm scales
        return gaussian(shape, gen, mean=1.0, std=0.1)
    if leaf == "bias":
        return gaussian(shape, gen, std=0.1)
    raise ValueError(f"no rule for state_dict entry {key!r} (shape {shape})")


def fill(module: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Give every state_dict entry its seeded value; return the state_dict (float32, their key order)."""
    gen = torch.Generator().manual_seed(seed_of(name))
    state = {key: value_of(key, value, gen) for key, value in module.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return state


def image(name: str, shape) -> torch.Tensor:
    return gaussian(shape, torch.Generator().manual_seed(seed_of(name) + 1))


# -- the fixtures ------------------------------------------------------------------------------------------
def mixer_case(upstream: types.ModuleType, name: str) -> dict:
    cls_name, dim, heads, grid = MIXERS[name]
    mixer = getattr(upstream, cls_name)(dim, heads).eval()
    rope = upstream.RoPE(dim, heads)
    state = fill(mixer, name)
    x = image(name, (BATCH, dim, *grid))  # (B, C, H, W)
    with torch.no_grad():
        sin, cos = rope.double()(grid)  # (H*W, d) each, from the buffer in its (float64) dtype
        y = mixer.double()(x.double(), sin, cos)
    return {
        "dim": dim,
        "heads": heads,
        "state_dict": state,
        "angle": rope.angle.float().clone(),
        "x": x,
        "y": y.float().contiguous(),
    }


def ravlt_case(upstream: types.ModuleType) -> dict:
    torch.manual_seed(0)  # their constructor initialises the weights before fill() replaces them
    model = upstream.RAVLT(**RAVLT_SMALL).eval()
    state = fill(model, "ravlt_small")
    x = image("ravlt_small", (BATCH, 3, *RAVLT_IMAGE))  # (B, 3, H, W)
    with torch.no_grad():
        logits = model.double()(x.double())  # (B, classes)
    return {"config": dict(RAVLT_SMALL), "state_dict": state, "x": x, "logits": logits.float().contiguous()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, metavar="PATH", help="the authors' classfication/RALA.py")
    parser.add_argument("--out", default=str(OUT), help=f"where to write the file (default: {OUT})")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float32)
    install_stubs()
    print(f"RALA: {args.src}")
    upstream = load_file(args.src)
    fixture = {"upstream": UPSTREAM, "mixers": {name: mixer_case(upstream, name) for name in MIXERS}}
    fixture["ravlt_small"] = ravlt_case(upstream)
    for name, case in fixture["mixers"].items():
        print(f"  {name}: y {tuple(case['y'].shape)}, |y| rms {case['y'].pow(2).mean().sqrt().item():.3g}")
    logits = fixture["ravlt_small"]["logits"]
    spread = ((logits[0] - logits[1]).norm() / logits.norm()).item()
    print(f"  ravlt_small: logits {tuple(logits.shape)}, relative difference between the two images {spread:.3g}")
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, target)
    print(f"  -> {target} ({target.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
