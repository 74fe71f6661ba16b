"""Produce tests/fixtures/local/<source>.pt: the authors' local-attention layers run on seeded inputs.

Usage (each --src names the authors' code; none of it is part of this project):

    PYTHONPATH=$PWD python scripts/make_local_fixtures.py \\
        --src swin=Swin-Transformer/models/swin_transformer.py \\
        --src swin_pad=Swin-Transformer-Object-Detection/mmdet/models/backbones/swin_transformer.py \\
        --src nat=Neighborhood-Attention-Transformer/classification/natten/nattentorch.py \\
        --src natten=NATTEN/src

- swin: microsoft/Swin-Transformer's models/swin_transformer.py. Per case, the attention branch of their
  `SwinTransformerBlock` (window partition, cyclic shift by -shift_size with their -100 attention mask,
  `WindowAttention` with its relative position bias, window reverse, roll back): the block with norm1 =
  identity and the MLP's fc2 = 0, minus its input. For unshifted cases also "op": the same branch with a
  zero bias table and proj = identity (their windowed softmax attention of their q, k, v projections).
- swin_pad: Swin's detection backbone (SwinTransformer/Swin-Transformer-Object-Detection), whose block pads a grid
  that is not a multiple of the window with zero tokens at the bottom/right (after norm1, so they take part as
  keys with their qkv bias) and whose `BasicLayer` builds the shift mask on the padded grid: one block of their
  `BasicLayer` (block 0 unshifted, block 1 shifted by window // 2) with norm1 = identity and fc2 = 0, minus its
  input, float64; grids that the window does not divide. No "op" (the `window` op masks padded keys instead).
- nat: the NAT authors' pure-PyTorch layer `LegacyNeighborhoodAttention` (unfold + replicate pad, their
  `rpb` indexed as their CUDA kernel does: the file's "Index flip"), from SHI-Labs/Neighborhood-Attention-
  Transformer before NATTEN became a separate package (file removed in 4c018447; in a clone: `git show
  1dbdc531:classification/natten/nattentorch.py > nattentorch.py`). It has no dilation. The
  NAT model code (classification/nat.py) uses NATTEN's `NeighborhoodAttention2D`; NATTEN <= 0.17 computes
  the rpb in compiled C++/CUDA kernels only, NATTEN >= 0.20 has no rpb.
- natten: SHI-Labs/NATTEN's `src` folder (the python package; the compiled libnatten is not needed): their
  `NeighborhoodAttention2D` (qkv, neighborhood attention with dilation, proj; no rpb) as "mixer" and their
  `na2d` on seeded q, k, v as "op". Without libnatten NATTEN picks its Flex Attention backend (their mask
  function, torch's flex_attention without compile), which takes float32 only: this source runs in float32,
  the others in float64. NATTEN writes log lines; set NATTEN_LOG_LEVEL to see its backend choice.

Each file holds "upstream" (repository@commit path), "note" and per case (tests/local_fixtures.CASES) a dict
with "params" ({name: shape} of the authors' layer; values: tests/local_fixtures.parameters), "mixer"
((B, C, H, W)) and "op" ((B, heads, N, d)) where the case has one, stored as float32. Buffers are not saved:
Swin's `relative_position_index` and `attn_mask` are derived from the window and shift.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import types
from pathlib import Path

import torch
from torch import nn
from upstream_stubs import load_file, stub_module, stub_timm_layers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import local_fixtures as lf  # noqa: E402

UPSTREAM = {
    "swin": "microsoft/Swin-Transformer@f82860bf models/swin_transformer.py",
    "swin_pad": "SwinTransformer/Swin-Transformer-Object-Detection@c7b20110 mmdet/models/backbones/swin_transformer.py",
    "nat": "SHI-Labs/Neighborhood-Attention-Transformer@1dbdc531 classification/natten/nattentorch.py",
    "natten": "SHI-Labs/NATTEN@8c8729f4 src/natten/modules.py",
}
NOTES = {
    "swin": "SwinTransformerBlock(norm1=identity, mlp.fc2=0)(x) - x; op: bias table = 0, proj = identity",
    "swin_pad": "BasicLayer with one of its blocks (norm1=identity, mlp.fc2=0), minus x: zero padding to the window",
    "nat": "LegacyNeighborhoodAttention(mode=1): rpb as their CUDA kernel indexes it; no dilation",
    "natten": "NeighborhoodAttention2D (no rpb) and na2d, Flex Attention backend without compile, float32",
}
STORED_AS = torch.float32


def install_stubs() -> None:
    stub_timm_layers()
    stub_module("mmcv_custom", load_checkpoint=None)
    stub_module("mmdet.utils", get_root_logger=None)


def fill(module: nn.Module, seed: int, prefix: str = "") -> dict[str, list[int]]:
    """Give every parameter under `prefix` its seeded value; return {name without prefix: shape}."""
    named = {name[len(prefix) :]: p for name, p in module.named_parameters() if name.startswith(prefix)}
    shapes = {name: list(p.shape) for name, p in named.items()}
    values = lf.parameters(shapes, seed)
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(values[name])
    return shapes


def identity_(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.eye(*linear.weight.shape))
        linear.bias.zero_()


def heads_of(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, heads, N, d)
    return t.reshape(t.shape[0], -1, lf.HEADS, lf.HEAD_DIM).transpose(1, 2)


# -- one function per source: case -> entry -------------------------------------------------------------
def swin(module_file, case: lf.Case) -> dict:
    block = module_file.SwinTransformerBlock(
        lf.DIM, input_resolution=case.grid, num_heads=lf.HEADS, window_size=case.size, shift_size=case.shift
    ).double()
    assert block.window_size == case.size and block.shift_size == case.shift, "the block changed the window"
    entry = {"params": fill(block, case.seed, prefix="attn.")}
    block.norm1 = nn.Identity()
    with torch.no_grad():
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
    x = lf.tokens(case)  # (B, H, W, C)
    b, (h, w) = case.batch, case.grid

    def branch():
        with torch.no_grad():
            return (block(x.reshape(b, h * w, lf.DIM)) - x.reshape(b, h * w, lf.DIM)).reshape(b, h, w, lf.DIM)

    entry["mixer"] = lf.to_map(branch())
    if case.has_op:
        with torch.no_grad():
            block.attn.relative_position_bias_table.zero_()
        identity_(block.attn.proj)
        entry["op"] = heads_of(branch())
    return entry


def swin_pad(module_file, case: lf.Case) -> dict:
    layer = module_file.BasicLayer(lf.DIM, depth=2, num_heads=lf.HEADS, window_size=case.size).double()
    block = layer.blocks[1 if case.shift else 0]
    assert block.shift_size == case.shift, f"their BasicLayer shifts by window // 2 = {layer.shift_size}"
    layer.blocks = nn.ModuleList([block])
    entry = {"params": fill(block, case.seed, prefix="attn.")}
    block.norm1 = nn.Identity()
    with torch.no_grad():
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
    x = lf.tokens(case)  # (B, H, W, C)
    (b, (h, w)), flat = (case.batch, case.grid), x.reshape(case.batch, -1, lf.DIM)
    with torch.no_grad():
        out = layer(flat, h, w)[0] - flat  # their BasicLayer returns (x, H, W, x_down, Wh, Ww)
    entry["mixer"] = lf.to_map(out.reshape(b, h, w, lf.DIM))
    return entry


def nat(module_file, case: lf.Case) -> dict:
    assert case.dilation == 1, "their pure-PyTorch layer has no dilation"
    with contextlib.redirect_stderr(io.StringIO()):  # their "legacy version" warning
        layer = module_file.LegacyNeighborhoodAttention(lf.DIM, case.size, lf.HEADS, qkv_bias=True, mode=1)
    layer = layer.double()
    entry = {"params": fill(layer, case.seed)}
    with torch.no_grad():
        entry["mixer"] = lf.to_map(layer(lf.tokens(case)))
    return entry


def natten(module_file, case: lf.Case) -> dict:
    layer = module_file.NeighborhoodAttention2D(
        embed_dim=lf.DIM, num_heads=lf.HEADS, kernel_size=case.size, dilation=case.dilation, qkv_bias=True
    )
    entry = {"params": fill(layer, case.seed)}
    with torch.no_grad():
        entry["mixer"] = lf.to_map(layer(lf.tokens(case).float()))
        b, (h, w) = case.batch, case.grid
        q, k, v = (t.float().transpose(1, 2).reshape(b, h, w, lf.HEADS, lf.HEAD_DIM) for t in lf.qkv(case))
        out = module_file.na2d(q, k, v, kernel_size=case.size, dilation=case.dilation)  # (B, H, W, heads, d)
        entry["op"] = out.reshape(b, h * w, lf.HEADS, lf.HEAD_DIM).transpose(1, 2)
    return entry


def load_natten(src: str):
    """NATTEN's python package from its `src` folder (or the package folder itself)."""
    root = Path(src).resolve()
    if (root / "natten" / "__init__.py").exists():
        root_dir = root
    elif (root / "__init__.py").exists() and root.name == "natten":
        root_dir = root.parent
    else:
        raise SystemExit(f"{src}: not NATTEN's src folder (expected {root}/natten/__init__.py)")
    sys.path.insert(0, str(root_dir))
    import natten as module  # noqa: PLC0415

    return module


def load_swin_detection(path: str) -> types.ModuleType:
    """Their backbone file imports `..builder` (mmdet's registry): a package around it with a stand-in registry."""
    for package in ("swin_det", "swin_det.backbones"):
        module = types.ModuleType(package)
        module.__path__ = []
        sys.modules[package] = module
    registry = types.SimpleNamespace(register_module=lambda *args, **kwargs: lambda cls: cls)
    stub_module("swin_det.builder", BACKBONES=registry)
    return load_file(path, "swin_det.backbones.swin_transformer", package="swin_det.backbones")


def load_upstream(name: str, path: str):
    if name == "natten":
        return load_natten(path), natten
    if name == "swin_pad":
        return load_swin_detection(path), swin_pad
    module_file = load_file(path, f"upstream_{name}")
    return module_file, {"swin": swin, "nat": nat}[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--src", action="append", default=[], metavar="SOURCE=PATH", help="the authors' code for one source (repeat)"
    )
    parser.add_argument("--out", default=str(lf.FIXTURE_DIR))
    args = parser.parse_args(argv)
    install_stubs()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in args.src:
        name, _, path = item.partition("=")
        if name not in UPSTREAM:
            parser.error(f"unknown source {name!r} (known: {', '.join(UPSTREAM)})")
        print(f"{name}: {path}")
        module_file, run = load_upstream(name, path)
        fixture = {"upstream": UPSTREAM[name], "note": NOTES[name], "dim": lf.DIM, "heads": lf.HEADS, "cases": {}}
        for case in lf.cases(name):
            entry = run(module_file, case)
            for key in ("op", "mixer"):
                if key in entry:
                    entry[key] = entry[key].detach().to(STORED_AS).contiguous()
            fixture["cases"][case.key] = entry
            print(f"  {case.key}: {', '.join(k for k in ('mixer', 'op') if k in entry)}")
        target = out_dir / f"{name}.pt"
        torch.save(fixture, target)
        print(f"  -> {target} ({target.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
