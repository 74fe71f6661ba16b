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

from attnbench.layers import Rope2d
from attnbench.registry import Shape, get, names
from mechanisms.linear.performer import performer_projection

OP_AND_MIXER = [
    "linear_elu",
    "linear_relu",
    "efficient_attention",
    "performer",
    "cosformer",
    "hydra",
    "nystromformer",
    "mlla",
    "inline",
    "rala_no_qaware",
    "rala_no_rope",
]
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
    """docs/rala.md "The 2D rotary embedding" by hand: pair p of channels rotated by theta_2p (complex product)."""
    d = x.shape[-1]
    angle = (1.0 / 10000 ** torch.linspace(0, 1, d // 4, dtype=torch.float64)).repeat_interleave(2)  # (d/2,)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    theta = torch.cat([rows.reshape(-1, 1) * angle, cols.reshape(-1, 1) * angle], dim=-1)[:, ::2]  # (N, d/2)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous()) * torch.polar(
        torch.ones_like(theta), theta
    )
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


def ref_performer(q, k, v, grid, eps=1e-4):
    """FAVOR+ as the authors' softmax_kernel: phi(x) = (exp(W x' - |x'|^2/2 - c) + eps) / sqrt(m), with c the
    max of W x' per query and over all keys and features of a head for keys (c cancels when eps = 0)."""
    w = performer_projection(q.shape[-1], 256, 0).double()
    d, m = q.shape[-1], w.shape[0]

    def feat(x, is_query):
        x = x * d**-0.25
        proj = x @ w.T
        c = proj.amax(-1, keepdim=True) if is_query else proj.amax((-2, -1), keepdim=True)
        return (torch.exp(proj - (x * x).sum(-1, keepdim=True) / 2 - c) + eps) / math.sqrt(m)

    return normalized(feat(q, True) @ feat(k, False).transpose(-1, -2), v, 0.0)


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
    "linear_elu": ref_linear_elu,
    "linear_relu": ref_linear_relu,
    "efficient_attention": ref_efficient,
    "performer": ref_performer,
    "cosformer": ref_cosformer,
    "hydra": ref_hydra,
    "mlla": ref_mlla,
    "inline": ref_inline,
    "nystromformer": ref_nystrom_softmax,
    "rala_no_qaware": ref_rala_no_qaware,
    "rala_no_rope": ref_rala_no_rope,
}


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
    torch.testing.assert_close(
        get(name).op(q, k, v, grid=grid), OP_REFERENCES[name](q, k, v, grid), rtol=1e-9, atol=1e-11
    )


def nystrom_segments(n: int, m: int) -> list[list[int]]:
    """The authors' vision split (token_nystromformer.py): s = N // m; the first m (s + 1) - N landmarks
    average s consecutive tokens, the others s + 1 (all s when m divides N)."""
    s = n // m
    short = m * (s + 1) - n if n % m else m
    sizes = [s] * short + [s + 1] * (m - short)
    starts = [sum(sizes[:i]) for i in range(m)]
    return [list(range(start, start + size)) for start, size in zip(starts, sizes)]


def newton_pinv(a, iters):  # the paper's iteration, Z_0 = A^T / ||A||_1 per matrix
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    z = a.transpose(-1, -2) / a.abs().sum(-2).amax(-1)[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


@pytest.mark.parametrize("grid,m,iters", [((6, 6), 9, None), ((14, 14), 64, 6), ((16, 16), 64, 6), ((28, 28), 64, 6)])
def test_nystromformer_landmarks_match_reference(grid, m, iters):
    """N = 36 (m | N, exact pseudo-inverse after 60 iterations), 196, 256 and 784 (the rank suite's grids;
    196 and 784 are not multiples of 64): segment-mean landmarks by the authors' split."""
    q, k, v = qkv(b=1, grid=grid, scale=1.5 if iters is None else 1.0)
    out = get("nystromformer").op(q, k, v, grid=grid, landmarks=m, pinv_iters=iters or 60)
    s = q.shape[-1] ** -0.25
    qs, ks = q * s, k * s
    seg = nystrom_segments(grid[0] * grid[1], m)
    assert sorted(i for idx in seg for i in idx) == list(range(grid[0] * grid[1]))
    ql = torch.stack([qs[..., idx, :].mean(-2) for idx in seg], dim=-2)
    kl = torch.stack([ks[..., idx, :].mean(-2) for idx in seg], dim=-2)
    f = torch.softmax(qs @ kl.transpose(-1, -2), -1)
    a = torch.softmax(ql @ kl.transpose(-1, -2), -1)
    b = torch.softmax(ql @ ks.transpose(-1, -2), -1)
    pinv = torch.linalg.pinv(a) if iters is None else newton_pinv(a, iters)
    torch.testing.assert_close(out, f @ pinv @ b @ v, rtol=1e-7, atol=1e-9)


def test_performer_eps_zero_is_the_unbiased_estimator():
    q, k, v = qkv(scale=0.5)
    out = get("performer").op(q, k, v, grid=(6, 5), eps=0.0)
    torch.testing.assert_close(out, ref_performer(q, k, v, (6, 5), eps=0.0), rtol=1e-9, atol=1e-11)
    assert (out - get("performer").op(q, k, v, grid=(6, 5))).abs().max() > 1e-6  # eps = 1e-4 is the default


def test_performer_approximates_softmax_attention():
    q, k, v = qkv(b=1, h=1, grid=(8, 8), d=16, scale=0.4)
    exact = torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
    approx = get("performer").op(q, k, v, grid=(8, 8), features=4096, eps=0.0)
    assert ((approx - exact).norm() / exact.norm()).item() < 0.05


def positions(table, side, grid):  # a learned (1, side^2, C) table, bilinearly resized to the grid: (1, N, C)
    square = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    return F.interpolate(square, size=grid, mode="bilinear").flatten(2).transpose(1, 2)


def test_flatten_operator_reference():
    grid, h = (6, 5), 2
    op = operator_of("flatten", 16, h, pos_grid=4)
    randomize(op)
    q, k, v = qkv(grid=grid, h=h)
    k_in = k
    k = split(merged(k) + positions(op.positional_encoding, 4, grid), h)  # their k = k + positional_encoding

    def focus(x):
        x = (merged(x).relu() + 1e-6) / F.softplus(op.scale)
        x3 = x**3
        return split(x3 / x3.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True), h)

    qf, kf = focus(q), focus(k)
    n = q.shape[-2]
    ref = normalized(qf @ kf.transpose(-1, -2) / n, v, 1e-6) + dwc_ref(v, op.dwc, grid)
    torch.testing.assert_close(op(q, k_in, v, grid=grid), ref, rtol=1e-9, atol=1e-10)


def test_agent_operator_reference():
    grid, h, d = (6, 6), 2, 8
    mech_op = operator_of("agent", h * d, h, agent_num=9, window=6)
    randomize(mech_op)
    q, k, v = qkv(grid=grid, h=h, d=d)
    s = d**-0.5
    agents = q.reshape(2, h, 3, 2, 3, 2, d).mean(dim=(3, 5)).reshape(2, h, 9, d)  # 2 x 2 block means
    b1 = F.interpolate(mech_op.an_bias, size=grid, mode="bilinear").reshape(h, 9, -1)
    b2 = F.interpolate(mech_op.na_bias, size=grid, mode="bilinear").reshape(h, 9, -1).transpose(-1, -2)
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # token n = row * W + col
    b1 = b1 + mech_op.ah_bias[0, :, :, rows, 0] + mech_op.aw_bias[0, :, :, 0, cols]  # axis biases (h, n, N)
    b2 = b2 + mech_op.ha_bias[0, :, rows, 0, :] + mech_op.wa_bias[0, :, 0, cols, :]  # (h, N, n)
    agent_v = torch.softmax(s * agents @ k.transpose(-1, -2) + b1, -1) @ v
    vmap = merged(v).transpose(1, 2).reshape(2, h * d, *grid)
    local = F.conv2d(vmap, mech_op.dwc.weight, mech_op.dwc.bias, padding=1, groups=h * d)  # (B, C, H, W)
    local = split(local.flatten(2).transpose(1, 2), h)
    ref = torch.softmax(s * q @ agents.transpose(-1, -2) + b2, -1) @ agent_v + local
    torch.testing.assert_close(mech_op(q, k, v, grid=grid), ref, rtol=1e-9, atol=1e-10)


def test_polaformer_operator_reference():
    grid, h, d = (6, 5), 2, 8
    op = operator_of("polaformer", h * d, h, pos_grid=3)
    randomize(op)
    q, k, v = qkv(grid=grid, h=h, d=d)
    p = 1 + 4 * torch.sigmoid(op.power)  # (1, h, 1, d)
    k_pos = merged(k) + positions(op.positional_encoding, 3, grid)  # their k = k + positional_encoding
    qs, ks = split(merged(q) / F.softplus(op.scale), h), split(k_pos / F.softplus(op.scale), h)
    qp, qn, kp, kn = qs.relu() ** p, (-qs).relu() ** p, ks.relu() ** p, (-ks).relu() ** p
    same = qp @ kp.transpose(-1, -2) + qn @ kn.transpose(-1, -2)
    opp = qp @ kn.transpose(-1, -2) + qn @ kp.transpose(-1, -2)
    n, (v1, v2) = q.shape[-2], v.chunk(2, dim=-1)
    ref = torch.cat([normalized(same / n, v1, 1e-6), normalized(opp / n, v2, 1e-6)], -1) + dwc_ref(v, op.dwc, grid)
    torch.testing.assert_close(op(q, k, v, grid=grid), ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("h", [1, 2, 4])
def test_inline_mixer_reference(h):
    """The whole InLine layer in fp64: q, k, v = projections of x; eq. 5; the 3 x 3 residual whose kernels
    the head-grouped predictor makes from the token mean of x (not of v: for h > 1 that is a different
    function); proj. Written with explicit per-head grouped convolutions."""
    grid, d = (6, 5), 8
    c = h * d
    mixer = get("inline").mixer(c, h).double()
    randomize(mixer, std=0.3)
    assert set(mixer.state_dict()) == {
        "qkvo.weight",
        "qkvo.bias",
        "proj.weight",
        "proj.bias",
        "operator.residual.0.weight",
        "operator.residual.0.bias",
        "operator.residual.2.weight",
        "operator.residual.2.bias",
    }
    x = rand(2, c, *grid, seed=4)
    t = torch.einsum("oc,bchw->bohw", mixer.qkvo.weight[:, :, 0, 0], x) + mixer.qkvo.bias[:, None, None]
    q, k, v = (split(t[:, i * c : (i + 1) * c].flatten(2).transpose(1, 2), h) for i in range(3))
    r0, r2 = mixer.operator.residual[0], mixer.operator.residual[2]
    x_mean = x.mean(dim=(2, 3))  # (B, C)
    hidden = []
    for head in range(h):  # grouped 1x1 convs: head i maps channels [i d, (i+1) d) -> its own outputs
        block = slice(head * d, (head + 1) * d)
        hidden.append(x_mean[:, block] @ r0.weight[block, :, 0].T + r0.bias[block])
    hidden = F.gelu(torch.cat(hidden, dim=1))
    kernels = []
    for head in range(h):
        inp, out = slice(head * d, (head + 1) * d), slice(head * 9 * d, (head + 1) * 9 * d)
        kernels.append(hidden[:, inp] @ r2.weight[out, :, 0].T + r2.bias[out])
    kernels = torch.cat(kernels, dim=1).reshape(2, c, 1, 3, 3)
    vmap = merged(v).transpose(1, 2).reshape(2, c, *grid)
    local = torch.stack([F.conv2d(vmap[i : i + 1], kernels[i], padding=1, groups=c)[0] for i in range(2)])
    inner = merged(ref_inline(q, k, v, grid)).transpose(1, 2).reshape(2, c, *grid) + local
    ref = torch.einsum("oc,bchw->bohw", mixer.proj.weight[:, :, 0, 0], inner) + mixer.proj.bias[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, None), ref, rtol=1e-9, atol=1e-10)


def test_rala_no_gate_mixer_is_rala_without_gate():
    from mechanisms.rala.naive import rala_op

    dim, h, grid = 16, 2, (6, 5)
    mixer = get("rala_no_gate").mixer(dim, h).double()
    assert mixer.qkvo.out_channels == 3 * dim and set(mixer.state_dict()) == {
        "qkvo.weight",
        "qkvo.bias",
        "lepe.weight",
        "lepe.bias",
        "proj.weight",
        "proj.bias",
    }
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
                extra = {"x": x} if getattr(mixer.operator, "reads_input", False) else {}
                assert torch.isfinite(mixer.operator(q, k, v, grid=grid, rope=None, **extra)).all()
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


SHELL_KEYS = {"qkvo.weight", "qkvo.bias", "proj.weight", "proj.bias"}
PAPER_LAYERS = {  # the default mixer's parameters: the paper's layer, no LePE, no gate unless the paper has it
    "linear_elu": set(),
    "linear_relu": set(),
    "efficient_attention": set(),
    "cosformer": set(),
    "hydra": set(),
    "nystromformer": set(),
    "performer": {"operator.projection"},
    "flatten": {"operator.scale", "operator.dwc.weight", "operator.dwc.bias", "operator.positional_encoding"},
    "agent": {f"operator.{b}_bias" for b in ("an", "na", "ah", "aw", "ha", "wa")}
    | {"operator.dwc.weight", "operator.dwc.bias"},
    "inline": {f"operator.residual.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")},
    "polaformer": {
        "operator.scale",
        "operator.power",
        "operator.dwc.weight",
        "operator.dwc.bias",
        "operator.positional_encoding",
    },
}


@pytest.mark.parametrize("name", sorted(PAPER_LAYERS))
def test_default_mixer_is_the_papers_layer(name):
    dim, h = 16, 2
    mech = get(name)
    mixer = mech.mixer(dim, h)
    assert set(mixer.state_dict()) == SHELL_KEYS | PAPER_LAYERS[name]
    assert mixer.lepe is None
    assert mixer.qkvo.out_channels == (4 if name == "polaformer" else 3) * dim  # PolaFormer's g is the gate
    assert mech.variant("mixer", {}) == "" and mech.variant("op", {}) == ""
    extras = mech.mixer(dim, h, lepe=True, gate=True)
    assert extras.lepe is not None and extras.qkvo.out_channels == 4 * dim
    assert mech.variant("mixer", {"lepe": True, "gate": True}) == ("+lepe" if name == "polaformer" else "+gate+lepe")
    assert mech.variant("op", {"lepe": True}) == ""  # shell options do not change the op


def test_mlla_mixer_is_its_token_mixer():
    mech = get("mlla")
    mixer = mech.mixer(16, 2)
    assert set(mixer.state_dict()) == {
        f"{m}.{p}" for m in ("in_proj", "act_proj", "dwc", "qk", "lepe", "out_proj") for p in ("weight", "bias")
    }
    assert mixer.lepe.kernel_size == (3, 3) and mixer.dwc.kernel_size == (3, 3)
    assert mech.variant("mixer", {}) == ""
    shell = mech.mixer(16, 2, gate=True, lepe=True)  # the shared shell around MLLA's op, on request
    assert shell.lepe.kernel_size == (5, 5) and mech.variant("mixer", {"lepe": True}) == "shell+gate+lepe"


def test_mlla_layer_reference():
    """MLLA's token mixer in fp64, written from the paper's block: g = SiLU(act(x)), h = SiLU(dwc(in(x))),
    q, k = qk(h), v = h, out_proj((attention(q, k, v) + lepe(h)) * g)."""
    dim, h, grid = 16, 2, (6, 5)
    mixer = get("mlla").mixer(dim, h).double()
    randomize(mixer, std=0.3)
    x = rand(2, dim, *grid, seed=4)

    def conv(m, t):
        return F.conv2d(t, m.weight, m.bias, padding=m.padding, groups=m.groups)

    gate = F.silu(conv(mixer.act_proj, x))
    hid = F.silu(conv(mixer.dwc, conv(mixer.in_proj, x)))
    qk = conv(mixer.qk, hid)
    q, k, v = (split(t.flatten(2).transpose(1, 2), h) for t in (qk[:, :dim], qk[:, dim:], hid))
    att = merged(ref_mlla(q, k, v, grid)).transpose(1, 2).reshape(2, dim, *grid)
    ref = conv(mixer.out_proj, (att + conv(mixer.lepe, hid)) * gate)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, None), ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["linear_elu", "nystromformer", "performer", "hydra"])
def test_plain_mixer_is_projection_operator_projection(name):
    """Mechanisms without a published vision layer: qkv projection, the op, the output projection."""
    dim, h, grid = 16, 2, (6, 5)
    mixer = get(name).mixer(dim, h).double()
    randomize(mixer, std=0.3)
    if name == "performer":
        mixer.operator.projection.copy_(performer_projection(dim // h, 256, 0))
    x = rand(2, dim, *grid, seed=4)
    t = torch.einsum("oc,bchw->bohw", mixer.qkvo.weight[:, :, 0, 0], x) + mixer.qkvo.bias[:, None, None]
    q, k, v = (split(t[:, i * dim : (i + 1) * dim].flatten(2).transpose(1, 2), h) for i in range(3))
    out = merged(get(name).op(q, k, v, grid=grid)).transpose(1, 2).reshape(2, dim, *grid)
    ref = torch.einsum("oc,bchw->bohw", mixer.proj.weight[:, :, 0, 0], out) + mixer.proj.bias[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, None), ref, rtol=1e-9, atol=1e-10)


def test_variant_names_options_that_differ_from_the_defaults(tmp_path):
    from attnbench.plan import plan
    from attnbench.suite import load_suite

    perf = get("performer")
    assert perf.variant("op", {"features": 256, "seed": 0}) == ""
    assert perf.variant("op", {"features": 128, "eps": 0.0}) == "eps=0.0 features=128"
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: v\nmechanisms: [flatten, performer, softmax_eager]\nlevel: [op, mixer]\ndim: 16\n"
        "heads: 2\nresolution: 6\nbatch: 1\ndevice: cpu\n"
        "options: {flatten: {lepe: true}, performer: {features: 64}}\n"
    )
    got = {(c.mechanism, c.level): c.variant for c in plan(load_suite(suite))}
    assert got == {
        ("flatten", "op"): "",
        ("flatten", "mixer"): "+lepe",
        ("performer", "op"): "features=64",
        ("performer", "mixer"): "features=64",
        ("softmax_eager", "op"): "",
        ("softmax_eager", "mixer"): "",
    }


def test_agent_in_a_backbone_uses_the_authors_per_stage_agents():
    from attnbench.models.ravlt import RAVLT

    model = RAVLT(
        embed_dims=(16, 32, 64, 128),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 4, 8),
        num_classes=0,
        mixer="agent",
        mixer_late="agent",
    )
    ops = [layer.blocks[0].attn.operator for layer in model.layers]
    assert [op.an_bias.shape[1] for op in ops] == [9, 16, 49, 49]  # Agent-PVT's agent_num by stage
    assert [op.ah_bias.shape[3] for op in ops] == [56, 28, 14, 7]  # the stage grids at 224 px
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1024)  # other grids: axis biases interpolated
