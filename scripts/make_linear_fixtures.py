"""Produce tests/fixtures/linear/<mechanism>.pt: the authors' published modules run on seeded inputs.

Usage (each --src names one authors' file; none of their code is part of this project):

    PYTHONPATH=$PWD:<dir with einops> python scripts/make_linear_fixtures.py \\
        --src flatten=FLatten-Transformer/models/flatten_pvt.py \\
        --src agent=Agent-Attention/agent_transformer/models/agent_pvt.py \\
        --src inline=InLine/models/inline_pvt.py --src polaformer=PolaFormer/models/pola_pvt.py \\
        --src mlla=MLLA/models/mlla.py \\
        --src nystromformer=Nystromformer/ImageNet/T2T-ViT/models/token_nystromformer.py \\
        --src performer=performer-pytorch/performer_pytorch/performer_pytorch.py \\
        --src cosformer=cosFormer/cosformer.py --src efficient_attention=efficient-attention/efficient_attention.py \\
        --src linear_elu=fast-transformers/fast_transformers/attention/linear_attention.py \\
        --src linear_relu=efficientvit/efficientvit/models/nn/ops.py

Their modules import timm, local_attention, ... only for parts we do not run; where such a package is
missing a stub module stands in (printed). einops must be importable (pure Python).

Each file holds, per case "HxW_hH" (tests/linear_fixtures.CASES: N = 196, 256; h = 1, 4; d = 8):
- "op": the authors' attention core on the case's inputs, (B, h, N, d);
- "mixer": the authors' layer on the case's input x, as (B, C, H, W);
- "params": {name: shape} of the authors' layer (values: tests/linear_fixtures.parameters);
- "op_params": the same for the module run for "op" where it has its own parameters;
plus "upstream" (repository@commit path) and "note". Everything runs in float64 (MLLA's RoPE casts to
float32 inside their code), outputs are stored as float32.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import types
from pathlib import Path

import torch
from torch import nn
from upstream_stubs import Unused, load_file, stub_module, stub_timm_layers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import linear_fixtures as lf  # noqa: E402

UPSTREAM = {
    "flatten": "LeapLabTHU/FLatten-Transformer@abdb115f models/flatten_pvt.py",
    "agent": "LeapLabTHU/Agent-Attention@207ce3eb agent_transformer/models/agent_pvt.py",
    "inline": "LeapLabTHU/InLine@e463a6f4 models/inline_pvt.py",
    "polaformer": "ZacharyMeng/PolaFormer@44cdd39e models/pola_pvt.py",
    "mlla": "LeapLabTHU/MLLA@66b6d297 models/mlla.py",
    "nystromformer": "mlpen/Nystromformer@56893131 ImageNet/T2T-ViT/models/token_nystromformer.py",
    "performer": "lucidrains/performer-pytorch@fc8b7844 performer_pytorch/performer_pytorch.py",
    "cosformer": "OpenNLPLab/cosFormer@8e12da11 cosformer.py",
    "efficient_attention": "cmsflash/efficient-attention@46a5f9ea efficient_attention.py",
    "linear_elu": "idiap/fast-transformers@2ad36b97 fast_transformers/attention/linear_attention.py",
    "linear_relu": "mit-han-lab/efficientvit@de7d7733 efficientvit/models/nn/ops.py",
}


# -- loading the authors' files ------------------------------------------------------------------------


def install_stubs() -> None:
    stub_timm_layers()
    stub_module("timm.models.registry", register_model=lambda fn: fn)
    stub_module("timm.models.vision_transformer", _cfg=lambda **kwargs: kwargs)
    stub_module("local_attention", LocalAttention=Unused)
    stub_module("axial_positional_embedding", AxialPositionalEmbedding=Unused)
    stub_module("performer_pytorch.reversible", ReversibleSequence=Unused, SequentialSequence=Unused)


def fill(module: nn.Module, seed: int) -> dict[str, list[int]]:
    """Give every parameter its seeded value (tests/linear_fixtures.parameters); return name -> shape."""
    shapes = {name: list(p.shape) for name, p in module.named_parameters()}
    values = lf.parameters(shapes, seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(values[name])
    return shapes


def identity_(linear: nn.Module) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.weight.shape[0], linear.weight.shape[1]).reshape(linear.weight.shape))
        if linear.bias is not None:
            linear.bias.zero_()


def zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def quiet(fn, *args):
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def to_map(t: torch.Tensor, grid) -> torch.Tensor:  # (B, N, C) -> (B, C, H, W)
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)


def to_heads(t: torch.Tensor, heads: int) -> torch.Tensor:  # (B, N, C) -> (B, h, N, d)
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def merged(t: torch.Tensor) -> torch.Tensor:  # (B, h, N, d) -> (B, N, C)
    return t.transpose(1, 2).flatten(2)


# -- one function per mechanism: (grid, heads) -> entry ------------------------------------------------
def pvt_layer(name: str, cls_name: str, **kwargs):
    def run(module_file, grid, heads):
        seed, n, c = lf.case_seed(name, grid, heads), grid[0] * grid[1], heads * lf.HEAD_DIM
        cls = getattr(module_file, cls_name)
        extra = {"num_patches": n} if name in ("flatten", "polaformer", "agent") else {}
        if name == "agent":
            extra["agent_num"] = 49 if grid == (14, 14) else 16
        layer = quiet(lambda: cls(c, num_heads=heads, qkv_bias=True, sr_ratio=1, **extra, **kwargs)).double()
        entry = {"params": fill(layer, seed), "agent_num": extra.get("agent_num", 0)}
        x = lf.tokens(name, grid, heads)
        entry["mixer"] = to_map(quiet(layer, x, *grid), grid)
        if name == "inline":  # op: their layer with the residual branch off and proj = identity
            zero_(layer.residual[2])
            identity_(layer.proj)
            entry["op"] = to_heads(quiet(layer, x, *grid), heads)
            entry["op_note"] = "q, k, v = their q/kv projections of x; residual[2] = 0; proj = identity"
        return entry

    return run


def mlla(module_file, grid, heads):
    seed, c = lf.case_seed("mlla", grid, heads), heads * lf.HEAD_DIM
    block = module_file.MLLABlock(c, grid, heads, qkv_bias=True).double()
    entry = {"params": fill(block, seed)}
    for part in (block.cpe1, block.cpe2, block.mlp.fc2):  # block(x) = x + token mixer(x)
        zero_(part)
    block.norm1 = nn.Identity()
    x = lf.tokens("mlla", grid, heads)
    entry["mixer"] = to_map(quiet(block, x) - x, grid)
    attn = module_file.LinearAttention(c, grid, heads, qkv_bias=True).double()
    entry["op_params"] = fill(attn, seed)
    zero_(attn.lepe)
    entry["op"] = to_heads(quiet(attn, x), heads)
    entry["op_note"] = "v = x; q, k = their qk projection of x; lepe = 0"
    return entry


def nystromformer(module_file, grid, heads):
    q, k, v = lf.qkv("nystromformer", grid, heads)
    d = lf.HEAD_DIM
    # dim = d so that their scale sqrt(dim / heads) is sqrt(d); qkv then replaced by an identity on [q, k, v]
    layer = module_file.NysAttention(
        d, num_heads=1, in_dim=d, qkv_bias=False, num_landmarks=64, kernel_size=0, init_option="exact"
    ).double()
    layer.qkv = nn.Linear(3 * d, 3 * d, bias=False).double()
    identity_(layer.qkv)
    identity_(layer.proj)
    outs = []
    for head in range(heads):  # their vision layer is single-head; heads are independent
        x = torch.cat([q[:, head], k[:, head], v[:, head]], dim=-1)  # (B, N, 3d)
        outs.append(quiet(layer, x) - v[:, head])  # their T2T layer returns v + attention
    return {"op": torch.stack(outs, dim=1), "op_note": "qkv = proj = identity, per head; minus their v residual"}


def performer(module_file, grid, heads):
    q, k, v = lf.qkv("performer", grid, heads)
    torch.manual_seed(lf.case_seed("performer", grid, heads))
    fast = module_file.FastAttention(lf.HEAD_DIM, nb_features=256)
    projection = fast.projection_matrix.clone()  # (m, d) float32, drawn by their code
    out = quiet(fast.double(), q, k, v)
    return {"op": out, "projection": projection}


def cosformer(module_file, grid, heads):
    seed, c = lf.case_seed("cosformer", grid, heads), heads * lf.HEAD_DIM
    layer = module_file.CosformerAttention(c, heads).double()
    entry = {"params": fill(layer, seed)}
    x = lf.tokens("cosformer", grid, heads).transpose(0, 1)  # (N, B, C)
    entry["mixer"] = to_map(quiet(layer, x).transpose(0, 1), grid)
    q, k, v = lf.qkv("cosformer", grid, heads)
    for proj in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
        identity_(proj)
    out = quiet(lambda: layer(merged(q).transpose(0, 1), merged(k).transpose(0, 1), merged(v).transpose(0, 1)))
    entry["op"] = to_heads(out.transpose(0, 1), heads)
    entry["op_note"] = "q/k/v/out projections = identity"
    return entry


def efficient_attention(module_file, grid, heads):
    seed, c = lf.case_seed("efficient_attention", grid, heads), heads * lf.HEAD_DIM
    layer = module_file.EfficientAttention(c, c, heads, c).double()
    entry = {"params": fill(layer, seed)}
    x = to_map(lf.tokens("efficient_attention", grid, heads), grid)
    entry["mixer"] = quiet(layer, x) - x  # their module adds its input
    q, k, v = lf.qkv("efficient_attention", grid, heads)
    big = module_file.EfficientAttention(3 * c, c, heads, c).double()  # input channels [q, k, v]
    with torch.no_grad():
        eye = torch.eye(3 * c, dtype=torch.float64)
        for conv, rows in ((big.queries, eye[:c]), (big.keys, eye[c : 2 * c]), (big.values, eye[2 * c :])):
            conv.weight.copy_(rows[:, :, None, None])
            conv.bias.zero_()
        big.reprojection.weight.copy_(eye[:, :c, None, None])
        big.reprojection.bias.zero_()
    xin = torch.cat([to_map(merged(t), grid) for t in (q, k, v)], dim=1)  # (B, 3C, H, W)
    out = (quiet(big, xin) - xin)[:, :c]  # (B, C, H, W)
    entry["op"] = to_heads(out.flatten(2).transpose(1, 2), heads)
    entry["op_note"] = "1x1 convs select q, k, v; reprojection = identity; minus their input residual"
    return entry


def linear_elu(path: str):
    root = Path(path).resolve().parents[2]
    sys.path.insert(0, str(root))
    stub_module("fast_transformers")
    attention = types.ModuleType("fast_transformers.attention")  # skip its __init__ (C++ extensions)
    attention.__path__ = [str(Path(path).resolve().parent)]
    sys.modules["fast_transformers.attention"] = attention
    module_file = importlib.import_module("fast_transformers.attention.linear_attention")
    masking = importlib.import_module("fast_transformers.masking")

    def run(_, grid, heads):
        q, k, v = lf.qkv("linear_elu", grid, heads)
        n = q.shape[-2]
        att = module_file.LinearAttention(lf.HEAD_DIM)
        lengths = masking.LengthMask(torch.full((lf.BATCH,), n, dtype=torch.int64), max_len=n)
        full = masking.FullMask(n)
        out = quiet(att, *(t.transpose(1, 2) for t in (q, k, v)), full, lengths, lengths)  # (B, N, h, d)
        return {"op": out.transpose(1, 2)}

    return module_file, run


def linear_relu(path: str):
    stub_module("efficientvit.models.nn.act", build_act=None)
    stub_module("efficientvit.models.nn.norm", build_norm=None)
    stub_module(
        "efficientvit.models.utils", get_same_padding=None, list_sum=None, resize=None, val2list=None, val2tuple=None
    )
    module_file = load_file(path, "efficientvit_ops")

    def run(_, grid, heads):
        q, k, v = lf.qkv("linear_relu", grid, heads)
        this = types.SimpleNamespace(dim=lf.HEAD_DIM, kernel_func=nn.ReLU(), eps=1.0e-15)
        parts = torch.stack([q, k, v], dim=2)  # (B, h, 3, N, d): channel = (head*3 + part)*d + j
        qkv = parts.permute(0, 1, 2, 4, 3).reshape(lf.BATCH, heads * 3 * lf.HEAD_DIM, *grid)
        out = quiet(module_file.LiteMLA.relu_linear_att, this, qkv)  # (B, h*d, H, W)
        return {"op": to_heads(out.flatten(2).transpose(1, 2), heads)}

    return module_file, run


RUNNERS = {
    "flatten": pvt_layer("flatten", "FocusedLinearAttention", focusing_factor=3, kernel_size=5),
    "agent": pvt_layer("agent", "AgentAttention"),
    "inline": pvt_layer("inline", "InLineAttention"),
    "polaformer": pvt_layer("polaformer", "PolaLinearAttention", kernel_size=5, alpha=4),
    "mlla": mlla,
    "nystromformer": nystromformer,
    "performer": performer,
    "cosformer": cosformer,
    "efficient_attention": efficient_attention,
}


def load_upstream(name: str, path: str):
    if name == "linear_elu":
        return linear_elu(path)
    if name == "linear_relu":
        return linear_relu(path)
    if name == "nystromformer":
        package = types.ModuleType("nys_models")
        package.__path__ = [str(Path(path).resolve().parent)]
        sys.modules["nys_models"] = package
        stub_module("nys_models.transformer_block", Mlp=Unused)
        return load_file(path, "nys_models.token_nystromformer", package="nys_models"), RUNNERS[name]
    return load_file(path, f"upstream_{name}"), RUNNERS[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="MECHANISM=PATH",
        help="the authors' file for one mechanism (repeat)",
    )
    parser.add_argument("--out", default=str(lf.FIXTURE_DIR))
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float32)
    install_stubs()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in args.src:
        name, _, path = item.partition("=")
        if name not in UPSTREAM:
            parser.error(f"unknown mechanism {name!r} (known: {', '.join(UPSTREAM)})")
        print(f"{name}: {path}")
        module_file, run = load_upstream(name, path)
        fixture = {"upstream": UPSTREAM[name], "head_dim": lf.HEAD_DIM, "batch": lf.BATCH, "cases": {}}
        for grid, heads in lf.CASES:
            entry = run(module_file, grid, heads)
            for key in ("op", "mixer"):
                if key in entry:
                    entry[key] = entry[key].detach().to(torch.float32).contiguous()
            fixture["cases"][lf.case_key(grid, heads)] = entry
        target = out_dir / f"{name}.pt"
        torch.save(fixture, target)
        print(f"  -> {target} ({target.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
