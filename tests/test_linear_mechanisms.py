"""The linear family and the RALA ablations: registration, shapes, numerics, references, costs.

Each reference below is written from the paper's formula in float64, in the quadratic ("left
product") form A V with the N x N weights A made explicit, independent of the mechanism's code
(which uses the associative form). Mixer-only mechanisms are checked at the operator level with
their module's parameters (set to non-trivial random values first).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mechanisms  # noqa: F401  (registers everything)
from attnbench.layers import Rope2d
from attnbench.registry import Shape, get, names
from mechanisms.linear.performer import performer_projection

OP_AND_MIXER = ["linear_elu", "linear_relu", "efficient_attention", "performer", "cosformer", "hydra",
                "nystromformer", "mlla", "inline", "rala_no_qaware", "rala_no_rope"]  # fmt: skip
MIXER_ONLY = ["flatten", "agent", "polaformer", "rala_no_gate"]
ALL = OP_AND_MIXER + MIXER_ONLY
CASES = [(n, "op") for n in OP_AND_MIXER] + [(n, "mixer") for n in ALL]
LINEAR_COST = [n for n in ALL if n != "rala_no_gate"]


def rand(*shape, seed: int, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def qkv(b=2, h=2, grid=(6, 5), d=8, *, scale=1.0, dtype=torch.float64):
    n = grid[0] * grid[1]
    return [rand(b, h, n, d, seed=s, scale=scale, dtype=dtype) for s in (1, 2, 3)]


def randomize(module: torch.nn.Module, seed: int = 7, std: float = 0.5) -> None:
    """Give every parameter non-trivial values (several inits are zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def operator_of(name: str, dim: int, heads: int, **options):
    return get(name).mixer(dim, heads, **options).double().operator


def merged(x):  # (B, h, N, d) -> (B, N, h*d)
    return x.transpose(1, 2).flatten(2)


def split(x, h):  # (B, N, h*d) -> (B, h, N, d)
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def dwc_ref(v, conv, grid):  # per-head depthwise conv shared by the heads; v (B, h, N, d)
    b, h, n, d = v.shape
    vm = v.reshape(b * h, n, d).transpose(1, 2).reshape(b * h, d, *grid)
    y = F.conv2d(vm, conv.weight, conv.bias, padding=conv.padding, groups=d)
    return y.reshape(b, h, d, n).transpose(-1, -2)


def normalized(a, v, eps):  # out_n = sum_m a_nm v_m / (sum_m a_nm + eps)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def spec_rope(x, grid):
    """spec/rala.md section 3 by hand: pair p of channels rotated by theta_2p (complex product)."""
    d = x.shape[-1]
    angle = (1.0 / 10000 ** torch.linspace(0, 1, d // 4, dtype=torch.float64)).repeat_interleave(2)  # (d/2,)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    theta = torch.cat([rows.reshape(-1, 1) * angle, cols.reshape(-1, 1) * angle], dim=-1)[:, ::2]  # (N, d/2)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous()) * torch.polar(torch.ones_like(theta),
                                                                                              theta)  # fmt: skip
    return torch.view_as_real(z).flatten(-2)


def phi(t):
    return F.elu(t) + 1


# -- fp64 references from the papers' formulas ---------------------------------------------------------
def ref_linear_elu(q, k, v, grid):
    return normalized(phi(q) @ phi(k).transpose(-1, -2), v, 1e-6)


def ref_linear_relu(q, k, v, grid):
    return normalized(q.relu() @ k.relu().transpose(-1, -2), v, 1e-15)


def ref_efficient(q, k, v, grid):
    return (q.softmax(-1) @ k.softmax(-2).transpose(-1, -2)) @ v


def ref_performer(q, k, v, grid):
    w = performer_projection(q.shape[-1], 256, 0).double()
    d, m = q.shape[-1], w.shape[0]

    def feat(x):
        x = x * d**-0.25
        return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(m)

    return normalized(feat(q) @ feat(k).transpose(-1, -2), v, 0.0)


def ref_cosformer(q, k, v, grid):
    n = q.shape[-2]
    i = torch.arange(1, n + 1, dtype=torch.float64)
    a = (q.relu() @ k.relu().transpose(-1, -2)) * torch.cos(math.pi / 2 * (i[:, None] - i[None, :]) / n)
    return (a @ v) / a.sum(-1, keepdim=True).clamp_min(1e-6)


def ref_hydra(q, k, v, grid):
    qm, km, vm = merged(q), merged(k), merged(v)
    qn, kn = qm / qm.norm(dim=-1, keepdim=True), km / km.norm(dim=-1, keepdim=True)
    return split(qn * (kn * vm).sum(dim=1, keepdim=True), q.shape[1])


def ref_mlla(q, k, v, grid):
    n, c = q.shape[-2], q.shape[1] * q.shape[-1]
    kmax = c // 4
    theta = 10000.0 ** (-torch.arange(kmax, dtype=torch.float64) / kmax)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    ang = torch.cat([rows.reshape(-1, 1) * theta, cols.reshape(-1, 1) * theta], dim=-1)  # (N, C/2)

    def rope(x):  # MLLA rotates the merged channels as complex pairs
        z = torch.view_as_complex(merged(x).reshape(x.shape[0], n, c // 2, 2).contiguous()) * torch.exp(1j * ang)
        return split(torch.view_as_real(z).flatten(-2), q.shape[1])

    qp, kp = phi(q), phi(k)
    a = rope(qp) @ rope(kp).transpose(-1, -2) / n
    return (a @ v) / (qp @ kp.mean(-2, keepdim=True).transpose(-1, -2) + 1e-6)


def ref_inline(q, k, v, grid):
    n, s = q.shape[-2], q.shape[-1] ** -0.5
    qk = q @ k.transpose(-1, -2)
    return (s / n * (qk - qk.mean(-1, keepdim=True)) + 1 / n) @ v


def ref_nystrom_softmax(q, k, v, grid):  # landmarks >= N: the Nystrom form is exact softmax attention
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def ref_rala_no_qaware(q, k, v, grid):
    qp, kp = phi(q), phi(k)
    a = spec_rope(qp, grid) @ spec_rope(kp, grid).transpose(-1, -2) / q.shape[-2]
    return (a @ v) / (qp @ kp.mean(-2, keepdim=True).transpose(-1, -2) + 1e-6)


def ref_rala_no_rope(q, k, v, grid):
    n, d = q.shape[-2], q.shape[-1]
    qp, kp = phi(q), phi(k)
    alpha = torch.softmax(d**-0.5 * qp.mean(-2, keepdim=True) @ kp.transpose(-1, -2), -1)  # (B, h, 1, N)
    kt = kp * alpha.transpose(-1, -2) * n
    return (qp @ kt.transpose(-1, -2) / n @ v) / (qp @ kt.mean(-2, keepdim=True).transpose(-1, -2) + 1e-6)


OP_REFERENCES = {
    "linear_elu": ref_linear_elu, "linear_relu": ref_linear_relu, "efficient_attention": ref_efficient,
    "performer": ref_performer, "cosformer": ref_cosformer, "hydra": ref_hydra, "mlla": ref_mlla,
    "inline": ref_inline, "nystromformer": ref_nystrom_softmax, "rala_no_qaware": ref_rala_no_qaware,
    "rala_no_rope": ref_rala_no_rope,
}  # fmt: skip


def test_registered_names_and_levels():
    expected = {n: ("op", "mixer") for n in OP_AND_MIXER} | {n: ("mixer",) for n in MIXER_ONLY}
    assert len(names(family="linear")) >= 12
    for name, levels in expected.items():
        mech = get(name)
        assert mech.levels == levels, name
        assert mech.family == ("rala" if name.startswith("rala_") else "linear")
        assert mech.cite


@pytest.mark.parametrize("name", list(OP_REFERENCES))
def test_op_matches_fp64_reference(name):
    grid = (6, 5)
    if name == "nystromformer":  # q = k, large norm: A = softmax(QK^T) well conditioned
        q, _, v = qkv(grid=grid, scale=2.0)
        out = get(name).op(q, q, v, grid=grid, pinv_iters=40)
        torch.testing.assert_close(out, ref_nystrom_softmax(q, q, v, grid), rtol=1e-7, atol=1e-9)
        return
    q, k, v = qkv(grid=grid, scale=0.5 if name == "performer" else 1.0)
    torch.testing.assert_close(get(name).op(q, k, v, grid=grid), OP_REFERENCES[name](q, k, v, grid),
                               rtol=1e-9, atol=1e-11)  # fmt: skip


def test_nystromformer_landmarks_match_pinv_reference():
    grid, m = (6, 6), 9
    q, k, v = qkv(grid=grid, scale=1.5)
    out = get("nystromformer").op(q, k, v, grid=grid, landmarks=m, pinv_iters=60)
    s = q.shape[-1] ** -0.25
    qs, ks = q * s, k * s
    seg = [list(range(i * 4, i * 4 + 4)) for i in range(m)]  # 36 tokens, 9 landmarks of 4
    ql = torch.stack([qs[..., idx, :].mean(-2) for idx in seg], dim=-2)
    kl = torch.stack([ks[..., idx, :].mean(-2) for idx in seg], dim=-2)
    f = torch.softmax(qs @ kl.transpose(-1, -2), -1)
    a = torch.softmax(ql @ kl.transpose(-1, -2), -1)
    b = torch.softmax(ql @ ks.transpose(-1, -2), -1)
    torch.testing.assert_close(out, f @ torch.linalg.pinv(a) @ b @ v, rtol=1e-7, atol=1e-9)


def test_performer_approximates_softmax_attention():
    q, k, v = qkv(b=1, h=1, grid=(8, 8), d=16, scale=0.4)
    exact = torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
    approx = get("performer").op(q, k, v, grid=(8, 8), features=4096)
    assert ((approx - exact).norm() / exact.norm()).item() < 0.05


def test_flatten_operator_reference():
    grid, h = (6, 5), 2
    op = operator_of("flatten", 16, h)
    randomize(op)
    q, k, v = qkv(grid=grid, h=h)

    def focus(x):
        x = (merged(x).relu() + 1e-6) / F.softplus(op.scale)
        x3 = x**3
        return split(x3 / x3.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True), h)

    qf, kf = focus(q), focus(k)
    n = q.shape[-2]
    ref = normalized(qf @ kf.transpose(-1, -2) / n, v, 1e-6) + dwc_ref(v, op.dwc, grid)
    torch.testing.assert_close(op(q, k, v, grid=grid), ref, rtol=1e-9, atol=1e-10)


def test_agent_operator_reference():
    grid, h, d = (6, 6), 2, 8
    mech_op = operator_of("agent", h * d, h, agent_num=9)
    randomize(mech_op)
    q, k, v = qkv(grid=grid, h=h, d=d)
    s = d**-0.5
    agents = q.reshape(2, h, 3, 2, 3, 2, d).mean(dim=(3, 5)).reshape(2, h, 9, d)  # 2 x 2 block means
    b1 = F.interpolate(mech_op.an_bias, size=grid, mode="bilinear").reshape(h, 9, -1)
    b2 = F.interpolate(mech_op.na_bias, size=grid, mode="bilinear").reshape(h, 9, -1).transpose(-1, -2)
    agent_v = torch.softmax(s * agents @ k.transpose(-1, -2) + b1, -1) @ v
    vmap = merged(v).transpose(1, 2).reshape(2, h * d, *grid)
    local = F.conv2d(vmap, mech_op.dwc.weight, mech_op.dwc.bias, padding=1, groups=h * d)  # (B, C, H, W)
    local = split(local.flatten(2).transpose(1, 2), h)
    ref = torch.softmax(s * q @ agents.transpose(-1, -2) + b2, -1) @ agent_v + local
    torch.testing.assert_close(mech_op(q, k, v, grid=grid), ref, rtol=1e-9, atol=1e-10)


def test_polaformer_operator_reference():
    grid, h, d = (6, 5), 2, 8
    op = operator_of("polaformer", h * d, h)
    randomize(op)
    q, k, v = qkv(grid=grid, h=h, d=d)
    p = 1 + 4 * torch.sigmoid(op.power)  # (1, h, 1, d)
    qs, ks = split(merged(q) / F.softplus(op.scale), h), split(merged(k) / F.softplus(op.scale), h)
    qp, qn, kp, kn = qs.relu() ** p, (-qs).relu() ** p, ks.relu() ** p, (-ks).relu() ** p
    same = qp @ kp.transpose(-1, -2) + qn @ kn.transpose(-1, -2)
    opp = qp @ kn.transpose(-1, -2) + qn @ kp.transpose(-1, -2)
    n, (v1, v2) = q.shape[-2], v.chunk(2, dim=-1)
    ref = torch.cat([normalized(same / n, v1, 1e-6), normalized(opp / n, v2, 1e-6)], -1) + dwc_ref(v, op.dwc, grid)
    torch.testing.assert_close(op(q, k, v, grid=grid), ref, rtol=1e-9, atol=1e-10)


def test_inline_operator_reference():
    grid, h, d = (6, 5), 2, 8
    op = operator_of("inline", h * d, h)
    randomize(op, std=0.3)
    q, k, v = qkv(grid=grid, h=h, d=d)
    weights = op.residual(merged(v).mean(1).unsqueeze(-1)).reshape(2, h * d, 1, 3, 3)
    vmap = merged(v).transpose(1, 2).reshape(2, h * d, *grid)
    local = torch.stack([F.conv2d(vmap[i : i + 1], weights[i], padding=1, groups=h * d)[0] for i in range(2)])
    ref = ref_inline(q, k, v, grid) + split(local.flatten(2).transpose(1, 2), h)
    torch.testing.assert_close(op(q, k, v, grid=grid), ref, rtol=1e-9, atol=1e-10)


def test_rala_no_gate_mixer_is_rala_without_gate():
    from mechanisms.rala.eager import rala_op

    dim, h, grid = 16, 2, (6, 5)
    mixer = get("rala_no_gate").mixer(dim, h).double()
    assert mixer.qkvo.out_channels == 3 * dim and set(mixer.state_dict()) == {
        "qkvo.weight", "qkvo.bias", "lepe.weight", "lepe.bias", "proj.weight", "proj.bias"}  # fmt: skip
    x = rand(2, dim, *grid, seed=4)
    rope = Rope2d(dim // h).double()(grid)
    t = mixer.qkvo(x)
    q, k, v = (split(t[:, i * dim : (i + 1) * dim].flatten(2).transpose(1, 2), h) for i in range(3))
    out = merged(rala_op(q, k, v, grid=grid, rope=rope)).transpose(1, 2).reshape(2, dim, *grid)
    ref = mixer.proj(out + mixer.lepe(t[:, 2 * dim :]))
    torch.testing.assert_close(mixer(x, rope), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,level", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_and_dtypes(name, level, dtype):
    mech, grid, h, d = get(name), (6, 5), 2, 8
    torch.manual_seed(0)
    if level == "op":
        q, k, v = qkv(grid=grid, h=h, d=d, dtype=dtype)
        out = mech.op(q, k, v, grid=grid)
        assert out.shape == q.shape and out.dtype == dtype
    else:
        mixer = mech.mixer(h * d, h).to(dtype)
        out = mixer(rand(2, h * d, *grid, seed=5, dtype=dtype), Rope2d(d).to(dtype)(grid))
        assert out.shape == (2, h * d, *grid) and out.dtype == dtype
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name,level", CASES)
@pytest.mark.parametrize("kind", ["large", "zeros"])
def test_finite_on_extreme_inputs(name, level, kind):
    mech, grid, h, d = get(name), (6, 5), 2, 8
    scale = 1e4 if kind == "large" else 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        if level == "op":
            out = mech.op(*qkv(grid=grid, h=h, d=d, scale=scale, dtype=torch.float32), grid=grid)
        else:
            mixer = mech.mixer(h * d, h)
            x = rand(2, h * d, *grid, seed=5, scale=scale, dtype=torch.float32)
            out = mixer(x, Rope2d(d)(grid))
            if "operator" in mixer._modules:  # the operator alone, on extreme q, k, v
                q, k, v = qkv(grid=grid, h=h, d=d, scale=scale, dtype=torch.float32)
                assert torch.isfinite(mixer.operator(q, k, v, grid=grid, rope=None)).all()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,level", CASES)
def test_analytic_flops_match_flop_counter(name, level):
    mech, grid, h, d = get(name), (12, 10), 2, 16
    s = Shape(1, h, *grid, d, h * d)
    torch.manual_seed(0)
    with torch.no_grad():
        if level == "op":
            q, k, v = qkv(b=1, grid=grid, h=h, d=d, dtype=torch.float32)
            with FlopCounterMode(display=False) as counter:
                mech.op(q, k, v, grid=grid)
        else:
            mixer, x = mech.mixer(h * d, h), rand(1, h * d, *grid, seed=5, dtype=torch.float32)
            rope = Rope2d(d)(grid)
            with FlopCounterMode(display=False) as counter:
                mixer(x, rope)
    counted = counter.get_total_flops()
    assert counted > 0
    assert mech.flops(s, level=level, pass_="fwd") == pytest.approx(counted, rel=0.10)


@pytest.mark.parametrize("name", LINEAR_COST + ["rala_no_gate"])
def test_costs_grow_linearly_in_tokens(name):
    mech = get(name)
    level = mech.levels[0]
    shapes = [Shape(2, 2, 8 * f, 8, 16, 32) for f in (1, 2, 4)]  # N = 64, 128, 256
    for cost in (lambda s: mech.flops(s, level=level, pass_="fwd"), lambda s: mech.bytes(s, level=level, dtype="fp32")):
        c1, c2, c4 = (cost(s) for s in shapes)
        assert 0 < c1 < c2 < c4
        assert c4 - c2 == pytest.approx(2 * (c2 - c1), rel=1e-12)  # affine in N
    assert mech.flops(shapes[0], level=level, pass_="fwd_bwd") == pytest.approx(
        3 * mech.flops(shapes[0], level=level, pass_="fwd")
    )


def test_options_reach_costs_and_operators():
    s = Shape(1, 1, 8, 8, 16, 16)
    perf = get("performer")
    assert perf.flops(s, level="op", pass_="fwd", features=128) < perf.flops(s, level="op", pass_="fwd")
    assert perf.mixer(16, 1, features=32).operator.projection.shape == (32, 16)
    with pytest.raises(TypeError, match="unknown options"):
        get("linear_elu").mixer(16, 1, features=3)
    assert get("flatten").mixer(16, 2, lepe=False).lepe is None
