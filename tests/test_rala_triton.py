"""rala_triton (Triton forward + backward) against float64 truth.

Truth: the readable operator `rala_op` (and the fused online-softmax form `fused_rala`) in float64,
gradients by autograd in float64. Error = ||x - ref|| / ||ref|| (relative RMS). Rule (FlashAttention's
test convention): err(triton, dtype) <= 2 * err(rala_eager, dtype) + 1e-5, with the eager error
measured in the same dtype on the same inputs. Without CUDA the kernels run in Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1) on tiny shapes in fp32; fp16/bf16 run on a GPU only
(`gpu` marker, scripts/gpu_check.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from attnbench.layers import Rope2d, rope_tables  # noqa: E402
from attnbench.registry import Shape, get  # noqa: E402
from mechanisms.rala.fused_form import fused_rala  # noqa: E402
from mechanisms.rala.naive import rala_op  # noqa: E402
from mechanisms.rala.triton_op import rala_triton_op  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rel_err(x: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    return (x.double() - ref).norm().item() / max(ref.norm().item(), floor)


def assert_rule(name: str, err_triton: float, err_eager: float) -> None:
    print(f"ERR {name:48s} triton {err_triton:.3e}  eager {err_eager:.3e}")
    assert err_triton <= 2 * err_eager + 1e-5, f"{name}: triton {err_triton:.3e} > 2 x eager {err_eager:.3e} + 1e-5"


def with_layout(x64: torch.Tensor, layout: str, dtype: torch.dtype) -> torch.Tensor:
    """A leaf (B, h, N, d) tensor with x64's values in `layout` memory order."""
    if layout == "bhnd":
        t = x64.to(dtype).contiguous()
    elif layout == "bnhd":  # (B, N, h, d) memory
        t = x64.transpose(1, 2).contiguous().to(dtype).transpose(1, 2)
    elif layout == "tokens":  # (B, h, d, N) memory: what the mixer's head split produces
        t = x64.transpose(2, 3).contiguous().to(dtype).transpose(2, 3)
    elif layout == "strided":  # every other channel of a wider buffer: stride_d = 2
        buf = torch.zeros(*x64.shape[:-1], 2 * x64.shape[-1], dtype=dtype, device=x64.device)
        buf[..., ::2] = x64.to(dtype)
        t = buf[..., ::2]
    else:
        raise ValueError(layout)
    return t.detach().requires_grad_()


def grads(fn, inputs, g):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, g.to(out.dtype)))


def run_case(batch, heads, grid, d, *, dtype="fp32", layout="bhnd", rope_kind=None, seed=0, device=DEVICE):
    """Compare triton and eager (both in `dtype`) with float64 truth on out, dq, dk, dv."""
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    q64, k64, v64, g64 = (
        torch.randn(batch, heads, n, d, generator=gen, dtype=torch.float64).to(device) for _ in range(4)
    )
    rope64 = rope = None
    if rope_kind == "default":  # the tables the mixer shell passes (fp32 buffer), in float64 for the truth
        rope = rope_tables(*grid, d, device=device)
        rope64 = tuple(t.double() for t in rope)
    elif rope_kind == "custom":  # a non-default angle: proves the kernel reads the tables it is given
        angle = torch.rand(d // 2, generator=gen, dtype=torch.float64).to(device)
        rope64 = rope_tables(*grid, d, angle=angle)
        rope = tuple(t.float() for t in rope64)
    leaves64 = [t.clone().requires_grad_() for t in (q64, k64, v64)]
    truth = grads(lambda q, k, v: rala_op(q, k, v, grid=grid, rope=rope64), leaves64, g64)
    if rope_kind is None:  # the fused one-pass form is the kernel's own statement: it must agree too
        assert rel_err(fused_rala(q64, k64, v64, grid=grid, block=7), truth[0]) < 1e-12

    dt = DTYPES[dtype]
    rope_dt = None if rope is None else tuple(t.to(dt) for t in rope)
    eager = grads(
        lambda q, k, v: rala_op(q, k, v, grid=grid, rope=rope_dt),
        [with_layout(t, "bhnd", dt) for t in (q64, k64, v64)],
        g64,
    )
    tri_in = [with_layout(t, layout, dt) for t in (q64, k64, v64)]
    tri = grads(lambda q, k, v: rala_triton_op(q, k, v, grid=grid, rope=rope), tri_in, g64)
    assert tri[0].dtype == dt and tri[0].shape == truth[0].shape
    # N = 1: out is invariant to the scale of phi(q) and phi(k) (up to the 1e-6), so dq and dk vanish
    # up to rounding; measure them against the gradient scale ||dv|| instead of their own tiny norm.
    floor = truth[3].norm().item() if n == 1 else 0.0
    tag = f"{dtype} B{batch} h{heads} {grid[0]}x{grid[1]} d{d} {layout} rope={rope_kind}"
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        fl = floor if what in ("dq", "dk") else 0.0
        assert_rule(f"{tag} {what}", rel_err(tri[i], truth[i], fl), rel_err(eager[i], truth[i], fl))
    return tri_in, tri


# ------------------------------------------------------------------------------------------------
# CPU (interpreter, fp32) and, on a GPU machine, the same cases compiled in fp32
# ------------------------------------------------------------------------------------------------
CASES = [  # (batch, heads, grid, d, layout); the interpreter's time grows with B*h x token blocks of 16
    (2, 2, (3, 7), 32, "bhnd"),  # B and h > 1; two token blocks in one split
    (1, 2, (1, 1), 64, "bhnd"),
    (1, 2, (3, 11), 96, "bnhd"),  # d-block 128 (padded), KV's value columns split; 3 blocks in 2 splits
    (2, 1, (3, 5), 128, "strided"),
    (2, 2, (3, 6), 64, "tokens"),  # token-major backward (d-block 64, no copies); main loop + masked tail
    (1, 2, (3, 6), 96, "tokens"),  # N % 16 != 0 at d-block 128: the backward runs on channel-major copies
]


@pytest.mark.parametrize("batch,heads,grid,d,layout", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_forward_backward_vs_fp64(batch, heads, grid, d, layout):
    from mechanisms.rala.launch import out_pass_wants_channel_major

    tri_in, tri = run_case(batch, heads, grid, d, layout=layout)
    copied = layout == "tokens" and out_pass_wants_channel_major(d, torch.float32)  # compiled fp32 d-block 128
    if layout in ("bnhd", "tokens") and not copied:  # the output keeps the input's layout: no copy at the head merge
        assert tri[0].stride() == tri_in[0].stride()


def test_rope_tables_from_memory():
    """Channel-major inputs with tables (a non-default angle, so the kernels must read the tables they are
    given); the default tables: token-major in test_main_loop_and_masked_tail, equal to the in-kernel
    rotation in test_in_kernel_rope_equals_default_tables."""
    run_case(1, 2, (3, 6), 32, rope_kind="custom", seed=1)


def test_in_kernel_rope_equals_default_tables():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 21, 32, device=DEVICE) for _ in range(3))
    a = rala_triton_op(q, k, v, grid=(3, 7))
    b = rala_triton_op(q, k, v, grid=(3, 7), rope=rope_tables(3, 7, 32, device=DEVICE))
    assert rel_err(a, b.double()) < 2e-6


@pytest.mark.parametrize(
    "grid,layout,rope_kind",
    [
        ((4, 8), "tokens", "default"),  # N = 32: whole blocks of 16, the unmasked main loop only
        ((3, 7), "tokens", "default"),  # N = 21: main loop + a masked tail of 5 tokens
        ((4, 8), "bhnd", None),
        ((1, 17), "bnhd", None),  # N = 17: a tail of one token
    ],
    ids=lambda v: str(v).replace(" ", ""),
)
def test_main_loop_and_masked_tail(grid, layout, rope_kind):
    """Token-major inputs (halves loaded as two tiles, tables handed over token-major) and
    channel-major ones, with N a multiple of BLOCK_N (16 here) and not. One head (two for (B, N, h, d)
    memory, which is (B, h, N, d) memory at one head)."""
    run_case(1, 2 if layout == "bnhd" else 1, grid, 32, layout=layout, rope_kind=rope_kind, seed=2)


@pytest.mark.slow
def test_split_merge_is_deterministic_and_split_invariant():
    """1 split, few splits (merge fused into pass (c)) and many (separate merge kernel) agree, and
    a repeated call is bitwise identical (fixed merge order, no atomics)."""
    from mechanisms.rala.launch import plan_launch
    from mechanisms.rala.triton_bwd import rala_backward
    from mechanisms.rala.triton_kernels import FUSE_MERGE_MAX_SPLITS, rala_forward

    b, h, grid, d = 1, 1, (5, 13), 32  # N = 65: 5 token blocks, the fewest that allow 5 splits
    n = grid[0] * grid[1]
    torch.manual_seed(0)
    q, k, v, g = (torch.randn(b, h, n, d, device=DEVICE) for _ in range(4))

    def run(splits):
        plan = plan_launch(b * h, n, d, q.dtype, q.device, block_n=16, splits=splits)
        assert plan.splits == splits
        out, ws = rala_forward(q, k, v, grid, plan=plan)
        return (out, *rala_backward(g, q, k, v, grid, None, ws, plan=plan))

    one, few, many, again = run(1), run(3), run(FUSE_MERGE_MAX_SPLITS + 1), run(FUSE_MERGE_MAX_SPLITS + 1)
    # different split counts sum in different orders: fp32 rounding only (eps 6e-8; a few dozen ulps)
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        assert torch.equal(many[i], again[i]), what
        assert rel_err(few[i], one[i].double()) < 4e-6, what
        assert rel_err(many[i], one[i].double()) < 4e-6, what


@pytest.mark.parametrize(
    "grid,layout,rope_kind",
    [
        ((3, 7), "bhnd", None),  # N = 21: a masked tail block
        ((4, 8), "tokens", "default"),  # N = 32 (a multiple of 16): the backward runs token-major, no copies
    ],
    ids=lambda v: str(v).replace(" ", ""),
)
def test_value_column_split_is_the_same(grid, layout, rope_kind):
    """fp32 at d-block 128 splits KV's and dKV's value columns (LaunchPlan.vb = 64). Forward: pass (b) on a (B*h, S, 2)
    grid; out and the merged state the backward reads (qbar, KV, ksum, M, L) equal the one-program forward
    (vb = 128), two splits. Backward: B2 (_dkv) reads dKV 64 value columns at a time in each token block; dq, dk,
    dv equal the register-resident dKV's (the fp16/bf16 path at d-block 128). Channel-major and token-major inputs.
    The merges read the split partials whatever vb wrote them; the separate merge (S > 4) at vb = 64 is
    checked against float64 truth in test_parallel_merge_many_splits."""
    import dataclasses

    from mechanisms.rala.launch import backward_wants_channel_major, interpreting, plan_launch
    from mechanisms.rala.triton_bwd import rala_backward
    from mechanisms.rala.triton_kernels import rala_forward

    b, h, d, splits = 1, 1, 96, 2
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(4)
    q, k, v, g = (
        with_layout(torch.randn(b, h, n, d, generator=gen, dtype=torch.float64), layout, torch.float32).detach()
        for _ in range(4)
    )
    rope = rope_tables(*grid, d) if rope_kind else None
    plan = plan_launch(b * h, n, d, torch.float32, q.device, block_n=16, splits=splits)
    bplan = plan_launch(
        b * h, n, d, torch.float32, q.device, block_n=16, splits=splits, backward=True, token_major=layout == "tokens"
    )
    assert plan.vb == 64 and plan.splits == splits and bplan.vb == 64
    if layout == "tokens" and interpreting():  # (compiled fp32 would copy to channel-major)
        assert not backward_wants_channel_major(n, d, torch.float32)
    split_out, split_ws = rala_forward(q, k, v, grid, rope, plan=plan)
    whole_out, whole_ws = rala_forward(q, k, v, grid, rope, plan=dataclasses.replace(plan, vb=128))
    assert rel_err(split_out, whole_out.double()) < 1e-6
    small = b * h * (2 * d + d * d + 2)  # the workspace's head: qbar, KV, ksum, (M, L) (state_ptrs)
    assert rel_err(split_ws[:small], whole_ws[:small].double()) < 1e-6
    split_grads = rala_backward(g, q, k, v, grid, rope, whole_ws, plan=bplan)
    whole_grads = rala_backward(g, q, k, v, grid, rope, whole_ws, plan=dataclasses.replace(bplan, vb=128))
    for what, split_grad, whole_grad in zip(("dq", "dk", "dv"), split_grads, whole_grads):
        assert rel_err(split_grad, whole_grad.double()) < 1e-6, what


@pytest.mark.parametrize("d", [96, 64])
def test_forward_channel_major_q_copy(d):
    """Token-major fp32 at d-block 128 on a GPU: passes (a) and (c) read a channel-major copy of q (their
    token-major form spills), out comes back contiguous; run here in the interpreter with compiled=True,
    it equals the token-major forward. At d-block 64 nothing is copied (out keeps the token-major layout)."""
    from mechanisms.rala.triton_kernels import rala_forward

    grid = (3, 6)  # N = 18: main loop + masked tail
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(8)
    q, k, v = (
        with_layout(torch.randn(1, 2, n, d, generator=gen, dtype=torch.float64), "tokens", torch.float32).detach()
        for _ in range(3)
    )
    rope = rope_tables(*grid, d)
    gpu_like, _ = rala_forward(q, k, v, grid, rope, compiled=True)
    interp, _ = rala_forward(q, k, v, grid, rope, compiled=False)
    assert interp.stride(2) == 1 and (gpu_like.stride(2) == 1) == (d <= 64)
    assert rel_err(gpu_like, interp.double()) < 1e-6


@pytest.fixture
def many_splits(monkeypatch):
    """Every launcher plans one split per token block of 16 (S up to the block count), so the
    separate, parallel merges run; yields the list of plans made, to check S really exceeded 4."""
    from mechanisms.rala import launch, triton_bwd, triton_kernels

    plans = []

    def plan(*args, **kwargs):
        kwargs.update(block_n=16, splits=10_000)  # capped at the token blocks
        plans.append(launch.plan_launch(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(triton_kernels, "plan_launch", plan)
    monkeypatch.setattr(triton_bwd, "plan_launch", plan)
    return plans


@pytest.mark.parametrize(
    "heads,grid,d,layout,rope_kind,record_block",
    [
        # S = 5 > a record block of 4: every merge reads the split records in two blocks, the second partly
        # filled (the kernels' own block of 16 takes S > 16: 17 token blocks, 3.5x the interpreter's time);
        # channel-major, in-kernel RoPE; two (b, h) with d*d = 400: a partly filled last chunk of 256
        (2, (5, 13), 20, "bhnd", None, 4),
        # the kernels' record block (16); token-major + tables; d-block 128 with padding, KV's value columns
        # split; d*d = 4624: 18 full chunks and a partly filled last one, 20 shares of T (two blocks of 16)
        (1, (8, 10), 68, "tokens", "default", None),
    ],
    ids=lambda v: str(v).replace(" ", ""),
)
def test_parallel_merge_many_splits(many_splits, monkeypatch, heads, grid, d, layout, rope_kind, record_block):
    """S > FUSE_MERGE_MAX_SPLITS: the forward and backward merges run as (B*h, chunks) grids; out and
    the gradients (T from the chunks' shares, added in order by `_dtotal_kernel`) against float64 truth."""
    from mechanisms.rala import triton_bwd, triton_kernels
    from mechanisms.rala.launch import FUSE_MERGE_MAX_SPLITS, MERGE_SPLITS_BLOCK

    if record_block:  # the launchers pass it to every merge kernel as SB (raises if they stop importing it)
        monkeypatch.setattr(triton_kernels, "MERGE_SPLITS_BLOCK", record_block)
        monkeypatch.setattr(triton_bwd, "MERGE_SPLITS_BLOCK", record_block)
    run_case(1, heads, grid, d, layout=layout, rope_kind=rope_kind, seed=3)
    n_blocks = -(-grid[0] * grid[1] // 16)
    assert min(p.splits for p in many_splits) == n_blocks > FUSE_MERGE_MAX_SPLITS
    assert n_blocks > record_block if record_block else n_blocks <= MERGE_SPLITS_BLOCK


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_backward_t_identity(eps):
    """The backward's T = <KV, dKV>_F + ksum . dksum is -eps sum_n dden_n ("~0 up to the epsilon" in triton_bwd),
    in float64 from the definitions, with a rotation R (any linear map) and a large eps for an O(1) T."""
    gen = torch.Generator().manual_seed(5)
    n, d = 30, 8
    q, k, v, g = (torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(4))
    rot = torch.linalg.qr(torch.randn(n, d, d, generator=gen, dtype=torch.float64))[0]  # R_n per token
    qp, kp = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    alpha = torch.softmax(d**-0.5 * kp @ qp.mean(0), 0)  # (N,)
    kv = torch.einsum("m,mij,mj,mk->ik", alpha, rot, kp, v)  # sum_m alpha_m R_m(kp_m) v_m^T
    ksum = alpha @ kp
    rq = torch.einsum("nij,nj->ni", rot, qp)
    num, den = rq @ kv, qp @ ksum + eps
    gn = g / den[:, None]
    dden = -(gn * num).sum(1) / den
    dkv, dksum = rq.T @ gn, dden @ qp
    t = (kv * dkv).sum() + ksum @ dksum
    assert abs(t.item() - (-eps * dden.sum()).item()) <= 1e-12 * max(1.0, (kv * dkv).sum().abs().item())


def test_mixer_matches_eager_mixer_with_shared_weights():
    mixer_level_case("fp32")


def mixer_level_case(dtype, device=DEVICE, dim=64, heads=2, grid=(3, 6)):
    """rala_triton's mixer (the RALA shell + this op) vs rala_eager's mixer, weights shared."""
    torch.manual_seed(0)
    dt = DTYPES[dtype]
    eager = get("rala_eager").mixer(dim, heads).to(device)
    tri = get("rala_triton").mixer(dim, heads).to(device)
    tri.load_state_dict(eager.state_dict())
    assert list(tri.state_dict()) == list(eager.state_dict())  # the published key names
    x64 = torch.randn(2, dim, *grid, dtype=torch.float64, device=device)
    g64 = torch.randn(2, dim, *grid, dtype=torch.float64, device=device)
    # tables as the mixer workload builds them (a Rope2d in the run dtype); the truth uses the same
    # tables in float64, so every error below is the mixer's arithmetic, not the tables' rounding
    rope = Rope2d(dim // heads).to(device=device, dtype=dt)(grid)

    def run(mixer, mdtype):
        mixer = mixer.to(mdtype)
        x = x64.to(mdtype).requires_grad_()
        y = mixer(x, tuple(t.to(mdtype) for t in rope))
        dx, dw = torch.autograd.grad(y, (x, mixer.qkvo.weight), g64.to(mdtype))
        return y, dx, dw

    truth = run(eager, torch.float64)
    eager.float()
    ref = run(eager, dt)
    got = run(tri, dt)
    for what, a, b, t in zip(("y", "dx", "dqkvo.weight"), got, ref, truth):
        assert_rule(f"mixer {dtype} {what}", rel_err(a, t), rel_err(b, t))


# ------------------------------------------------------------------------------------------------
# registration, availability, costs, import hygiene
# ------------------------------------------------------------------------------------------------
def test_registration_fields_and_bytes():
    mech = get("rala_triton")
    assert (mech.family, mech.backend, mech.reference, mech.requires) == ("rala", "triton", "rala_eager", ("triton",))
    assert set(mech.levels) == {"op", "mixer"}
    s = Shape(batch=2, heads=3, height=4, width=5, head_dim=64, dim=192)
    assert mech.bytes(s, level="op", dtype="fp16") == 5 * 2 * 3 * 20 * 64 * 2  # q twice, k, v, out
    assert mech.flops(s, level="op", pass_="fwd") == get("rala_eager").flops(s, level="op", pass_="fwd")


def test_check_reasons(monkeypatch):
    mech = get("rala_triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in mech.check("cpu")
    assert mech.check("cuda") is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert mech.check("cpu") is None


def test_input_validation():
    q = torch.randn(1, 1, 6, 30, device=DEVICE)
    with pytest.raises(ValueError, match="divisible by 4"):
        rala_triton_op(q, q, q, grid=(2, 3))
    q = torch.randn(1, 1, 6, 32, device=DEVICE)
    with pytest.raises(ValueError, match="tokens"):
        rala_triton_op(q, q, q, grid=(2, 2))


def test_importing_mechanisms_does_not_import_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import sys, mechanisms; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))


# ------------------------------------------------------------------------------------------------
# GPU: fp16 / bf16 (and bigger grids); skipped without CUDA, run by scripts/gpu_check.sh
# ------------------------------------------------------------------------------------------------
GPU_CASES = [  # (batch, heads, grid, d, layout)
    (2, 2, (7, 9), 32, "bhnd"),
    (2, 3, (1, 1), 64, "bhnd"),
    (1, 2, (3, 50), 96, "bnhd"),
    (2, 1, (4, 5), 128, "strided"),
    (2, 2, (14, 14), 64, "tokens"),
    (4, 1, (28, 28), 64, "bhnd"),
    (2, 2, (14, 14), 96, "bhnd"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("batch,heads,grid,d,layout", GPU_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_gpu_half_precision(dtype, batch, heads, grid, d, layout):
    run_case(batch, heads, grid, d, dtype=dtype, layout=layout, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "batch,heads,grid,d,layout",
    [GPU_CASES[0], GPU_CASES[2], GPU_CASES[4], (2, 2, (7, 9), 96, "tokens")],
    ids=lambda v: str(v).replace(" ", ""),
)
def test_gpu_fp32(batch, heads, grid, d, layout):
    """fp32 compiled: IEEE dots (no TF32) and the fast in-kernel sin/cos stay within the fp32 rule. d = 96
    (d-block 128): KV's split value columns and the backward's dKV in column steps; token-major with N = 63
    (not a multiple of 16): the forward's channel-major q copy at 16 warps and the backward's copies."""
    run_case(batch, heads, grid, d, dtype="fp32", layout=layout, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("rope_kind", ["default", "custom"])
def test_gpu_rope_tables(dtype, rope_kind):
    run_case(2, 2, (14, 14), 64, dtype=dtype, rope_kind=rope_kind, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_gpu_mixer(dtype):
    mixer_level_case(dtype, device="cuda", dim=128, heads=2, grid=(14, 14))


@pytest.mark.gpu
@pytest.mark.parametrize("dim,heads", [(192, 2), (128, 1)], ids=["d96", "d128"])
def test_gpu_mixer_wide_heads(dim, heads):
    """Mixer (token-major halves, tables from memory) at RAVLT-B/L's head dim 96 and at 128, bf16."""
    mixer_level_case("bf16", device="cuda", dim=dim, heads=heads, grid=(28, 28))


@pytest.mark.gpu
@pytest.mark.parametrize("batch,heads", [(64, 1), (8, 4)])
def test_gpu_benchmark_shapes(batch, heads):
    """The benchmark suites' B*h at 56x56, d = 64, bf16 (rala_kernels.yaml, rala_kernels_h4.yaml)."""
    run_case(batch, heads, (56, 56), 64, dtype="bf16", device="cuda")


@pytest.mark.gpu
def test_gpu_large_grid_split_n():
    """Few (b, h), many tokens: the split-N path at a real RAVLT stage-1 size, fp16."""
    run_case(1, 1, (56, 56), 64, dtype="fp16", device="cuda")
