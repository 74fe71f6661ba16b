"""softmax_eager and softmax_sdpa vs an fp64 reference written here from the formula.

Tolerance rule (FlashAttention's): a backend's relative RMS error vs the fp64 reference may be at
most 2x that of the eager implementation in the same dtype, plus a floor of 1e-6 (fp32 eager is
often exact to ~1e-7, where a 2x rule alone would be noise-driven).
"""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.layers import Rope2d
from attnbench.registry import Shape, get


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def attention_fp64(q, k, v):
    """softmax(q k^T / sqrt(d)) v, written loop-free but independently of the code under test."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhnm,bhmd->bhnd", weights, v)


@pytest.mark.parametrize("shape", [(2, 3, 35, 16), (1, 1, 1, 8), (1, 2, 49, 64)])
def test_op_level(shape):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=g) * 2 for _ in range(3))
    ref = attention_fp64(q, k, v)
    h, w = shape[2], 1
    err_eager = rel_err(get("softmax_eager").op(q, k, v, grid=(h, w)), ref)
    err_sdpa = rel_err(get("softmax_sdpa").op(q, k, v, grid=(h, w)), ref)
    assert err_eager < 1e-5
    assert err_sdpa <= 2 * err_eager + 1e-6


def test_mixer_level_same_weights():
    torch.manual_seed(0)
    eager = get("softmax_eager").mixer(64, 2)
    sdpa = get("softmax_sdpa").mixer(64, 2)
    sdpa.load_state_dict(eager.state_dict())
    keys = {"qkvo.weight", "qkvo.bias", "lepe.weight", "lepe.bias", "proj.weight", "proj.bias"}
    assert set(eager.state_dict()) == keys
    x = torch.randn(2, 64, 5, 7)
    rope = Rope2d(32)((5, 7))
    with torch.no_grad():
        y_eager, y_sdpa = eager(x, rope), sdpa(x, rope)
        # fp64 reference of the whole mixer (docs/rala.md, "The token-mixer shell" and "The softmax operator"),
        # built from the module's weights
        xd = x.double()
        t = torch.nn.functional.conv2d(xd, eager.qkvo.weight.double(), eager.qkvo.bias.double())
        c = 64
        lepe = torch.nn.functional.conv2d(
            t[:, 2 * c : 3 * c], eager.lepe.weight.double(), eager.lepe.bias.double(), padding=2, groups=c
        )
        qkv = t[:, : 3 * c].reshape(2, 3, 2, 32, 35).permute(1, 0, 2, 4, 3)  # (3, B, h, N, d)
        sin, cos = (r.double() for r in Rope2d(32).double()((5, 7)))

        def rot(z):
            pairs = z.reshape(*z.shape[:-1], 16, 2)
            return torch.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(z.shape)

        q = qkv[0] * cos + rot(qkv[0]) * sin
        k = qkv[1] * cos + rot(qkv[1]) * sin
        out = attention_fp64(q, k, qkv[2]).transpose(-1, -2).reshape(2, c, 5, 7)
        ref = torch.nn.functional.conv2d(
            (out + lepe) * t[:, 3 * c :], eager.proj.weight.double(), eager.proj.bias.double()
        )
    err_eager = rel_err(y_eager, ref)
    assert err_eager < 1e-5
    assert rel_err(y_sdpa, ref) <= 2 * err_eager + 1e-6


def test_published_softmax_mixer_fixture(rala_fixtures):
    case = rala_fixtures["mixers"]["softmax_128x2"]
    for name in ("softmax_eager", "softmax_sdpa"):
        mixer = get(name).mixer(case["dim"], case["heads"])
        mixer.load_state_dict(case["state_dict"])
        rope = Rope2d(case["dim"] // case["heads"])
        rope.angle.copy_(case["angle"])
        with torch.no_grad():
            y = mixer(case["x"], rope(case["x"].shape[-2:]))
        assert rel_err(y, case["y"].double()) < 1e-5, name


def test_flops_convention():
    s = Shape(batch=2, heads=3, height=7, width=9, head_dim=16, dim=48)
    mech = get("softmax_eager")
    fwd = mech.flops(s, level="op", pass_="fwd")
    assert fwd == 4 * 2 * 3 * 63**2 * 16
    assert mech.flops(s, level="op", pass_="fwd_bwd") == 3.5 * fwd
    assert mech.bytes(s, level="op", dtype="fp16") == 4 * 2 * 3 * 63 * 16 * 2


def test_flops_match_flopcounter():
    from torch.utils.flop_counter import FlopCounterMode

    s = Shape(batch=2, heads=2, height=6, width=6, head_dim=16, dim=32)
    mech = get("softmax_eager")
    q, k, v = (torch.randn(2, 2, 36, 16) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        mech.op(q, k, v, grid=(6, 6))
    assert counter.get_total_flops() == mech.flops(s, level="op", pass_="fwd")
    mixer = mech.mixer(32, 2)
    x = torch.randn(2, 32, 6, 6)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mixer(x, Rope2d(16)((6, 6)))
    assert counter.get_total_flops() == mech.flops(s, level="mixer", pass_="fwd")
