"""Softmax backends: flash-attn / FA3 / xformers glue (via stand-ins on CPU), SDPA pinned per backend.

Truth: softmax(q k^T / sqrt(d)) v in float64, written here. Tolerance rule (FlashAttention's, as in
tests/test_softmax.py): a backend's relative RMS error vs that reference may be at most 2x the error
of softmax_eager in the same dtype, plus a floor of 1e-6.

On CPU the real flash-attn/xformers cannot run, so tests/standins provides modules with the same
call signatures and input contract ((B, N, h, d), d innermost) computing attention eagerly in that
layout; the glue is run on CPU by adding "cpu" to the mechanism's devices for the test. Tests marked
`gpu` run the real backends where CUDA (and the package) exist and skip with the reason otherwise.
"""

from __future__ import annotations

import copy
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnbench.dtypes import TORCH_DTYPES
from attnbench.errors import MechanismUnavailable
from attnbench.layers import Rope2d, split_heads
from attnbench.registry import Shape, get
from mechanisms.softmax import external, sdpa

STANDINS = Path(__file__).parent / "standins"
STANDIN_MODULES = ("flash_attn", "flash_attn_interface", "xformers", "_standin_attention")
PINNED = ("softmax_sdpa_flash", "softmax_sdpa_efficient", "softmax_sdpa_math", "softmax_sdpa_cudnn")
EXTERNAL = ("softmax_flash", "softmax_xformers")
SHAPE = dict(batch=2, heads=3, height=5, width=7, head_dim=16)  # N = 35 != h = 3: a swapped axis shows


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert x.shape == ref.shape, f"shape {tuple(x.shape)} != reference {tuple(ref.shape)}"
    return ((x.double() - ref).norm() / ref.norm()).item()


def attention_fp64(q, k, v):
    """softmax(q k^T / sqrt(d)) v on (B, h, N, d), in float64, independent of the code under test."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    return torch.einsum("bhnm,bhmd->bhnd", weights / weights.sum(-1, keepdim=True), v)


def make_inputs(layout: str, dtype: str, device: str = "cpu", *, batch, heads, height, width, head_dim, seed=0):
    """q, k, v (B, h, N, d) in a mechanism's layout: "bnhd" = (B, N, h, d) storage viewed as (B, h, N, d)."""
    g = torch.Generator().manual_seed(seed)
    n = height * width
    storage = (batch, n, heads, head_dim) if layout == "bnhd" else (batch, heads, n, head_dim)
    made = [torch.randn(*storage, generator=g).to(device=device, dtype=TORCH_DTYPES[dtype]) for _ in range(3)]
    return [t.transpose(1, 2) for t in made] if layout == "bnhd" else made


def assert_matches_eager(name: str, dtype: str, device: str = "cpu", **shape) -> None:
    """Op output of `name` vs float64 truth within 2x softmax_eager's error, on inputs in the mechanism's layout."""
    mech, eager = get(name), get("softmax_eager")
    shape = {**SHAPE, **shape}
    q, k, v = make_inputs(mech.layout, dtype, device, **shape)
    grid = (shape["height"], shape["width"])
    with torch.no_grad():
        ref = attention_fp64(q, k, v)
        err_eager = rel_err(eager.op(q, k, v, grid=grid), ref)
        err = rel_err(mech.op(q, k, v, grid=grid), ref)
    assert err <= 2 * err_eager + 1e-6, f"{name} {dtype}: rel err {err:.3g} vs eager {err_eager:.3g}"


def assert_mixer_matches_eager(name: str, dtype: str, device: str = "cpu", *, dim: int = 32, heads: int = 2) -> None:
    """The mechanism's mixer with softmax_eager's weights vs that mixer in float64 (same 2x rule)."""
    torch.manual_seed(0)
    eager = get("softmax_eager").mixer(dim, heads)
    cand = get(name).mixer(dim, heads)
    cand.load_state_dict(eager.state_dict())
    x, rope = torch.randn(2, dim, 4, 5), Rope2d(dim // heads)((4, 5))  # (B, C, H, W); sin, cos (N, d)
    tdtype = TORCH_DTYPES[dtype]

    def run(module, dt):
        with torch.no_grad():
            return module.to(device=device, dtype=dt)(x.to(device, dt), tuple(r.to(device, dt) for r in rope))

    ref = run(copy.deepcopy(eager), torch.float64)
    err_eager = rel_err(run(eager, tdtype), ref)
    err = rel_err(run(cand, tdtype), ref)
    assert err <= 2 * err_eager + 1e-6, f"{name} mixer {dtype}: rel err {err:.3g} vs eager {err_eager:.3g}"


def assert_grads_match_eager(name: str, dtype: str, device: str = "cpu", shape=(1, 2, 12, 16)) -> None:
    """Gradients of sum(out * g) w.r.t. contiguous (B, h, N, d) q, k, v: within 2x softmax_eager's error."""
    g64 = torch.Generator().manual_seed(1)
    q, k, v, g = (torch.randn(*shape, generator=g64, dtype=torch.float64).to(device) for _ in range(4))
    ref = torch.autograd.grad(attention_fp64(*(t.requires_grad_() for t in (q, k, v))), (q, k, v), g)
    ref_flat = torch.cat([t.flatten() for t in ref])

    def grads(mech_name):
        xs = [t.detach().to(TORCH_DTYPES[dtype]).requires_grad_() for t in (q, k, v)]
        out = get(mech_name).op(*xs, grid=(1, shape[2]))
        return torch.cat([t.flatten() for t in torch.autograd.grad(out, xs, g.to(out.dtype))])

    err, err_eager = rel_err(grads(name), ref_flat), rel_err(grads("softmax_eager"), ref_flat)
    assert err <= 2 * err_eager + 1e-6, f"{name} grads {dtype}: rel err {err:.3g} vs eager {err_eager:.3g}"


def kernel_of(out: torch.Tensor) -> str:
    """Which kernel produced `out` (inputs requiring grad): its autograd node, e.g. ScaledDotProductFlashAttention..."""
    return type(out.grad_fn).__name__


def _reset(mech) -> None:
    for cache in ("_avail_cache", "_impl_cache", "_probe_cache"):
        mech.__dict__.pop(cache, None)


@pytest.fixture
def standins(monkeypatch):
    """Stand-in packages importable, flash/xformers allowed on CPU; everything restored afterwards."""
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in STANDIN_MODULES}
    monkeypatch.syspath_prepend(str(STANDINS))
    mechs = [get(n) for n in EXTERNAL]
    for mech in mechs:
        monkeypatch.setattr(mech, "devices", ("cpu", "cuda"))
        monkeypatch.setattr(mech, "backend", mech.backend)
        _reset(mech)
    yield {n: m for n, m in zip(EXTERNAL, mechs)}
    for mech in mechs:
        _reset(mech)
    for n in [n for n in sys.modules if n.split(".")[0] in STANDIN_MODULES]:
        del sys.modules[n]
    sys.modules.update(saved)


# -- registrations ---------------------------------------------------------------------------------------
def test_registrations_and_shared_costs():
    eager = get("softmax_eager")
    s = Shape(batch=2, heads=3, height=7, width=9, head_dim=16, dim=48)
    for name in PINNED + EXTERNAL:
        mech = get(name)
        assert (mech.family, mech.reference, mech.levels) == ("softmax", "softmax_eager", ("op", "mixer")), name
        assert mech.layout == ("bnhd" if name in EXTERNAL else "bhnd"), name
        for level in ("op", "mixer"):
            for pass_ in ("fwd", "fwd_bwd"):
                assert mech.flops(s, level=level, pass_=pass_) == eager.flops(s, level=level, pass_=pass_)
            assert mech.bytes(s, level=level, dtype="fp16") == eager.bytes(s, level=level, dtype="fp16")
    assert get("softmax_flash").dtypes == ("fp16", "bf16") and get("softmax_flash").head_dims[-1] == 256
    assert get("softmax_sdpa_math").devices == ("cpu", "cuda")


def test_cpu_availability_reasons():
    for name in ("softmax_sdpa_flash", "softmax_sdpa_efficient", "softmax_sdpa_cudnn"):
        ok, reason = get(name).available("cpu")
        assert not ok and "needs CUDA (this is cpu)" in reason, (name, reason)
    assert "CPU flash kernel" in get("softmax_sdpa_flash").available("cpu")[1]
    assert get("softmax_sdpa_math").available("cpu") == (True, "")
    for name in EXTERNAL:
        ok, reason = get(name).available("cpu")
        assert not ok and "need CUDA (this is cpu)" in reason, (name, reason)


def test_cpu_reasons_are_true_for_this_torch():
    """What the CPU reasons claim: pinned FLASH runs PyTorch's CPU flash kernel; EFFICIENT/CUDNN have none."""
    q = torch.randn(1, 2, 16, 8, requires_grad=True)  # (B, h, N, d)
    assert kernel_of(sdpa.sdpa_pinned("flash", q, q, q)) == "ScaledDotProductFlashAttentionForCpuBackward0"
    assert kernel_of(F.scaled_dot_product_attention(q, q, q)) == "ScaledDotProductFlashAttentionForCpuBackward0"
    for backend in ("efficient", "cudnn"):
        with pytest.raises(RuntimeError, match="No viable backend|No available kernel"):
            sdpa.sdpa_pinned(backend, q, q, q)


# -- SDPA pinned -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sdpa_math_matches_and_runs_math(dtype):
    assert_matches_eager("softmax_sdpa_math", dtype)
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    assert "ScaledDotProduct" not in kernel_of(get("softmax_sdpa_math").op(q, q, q, grid=(4, 4)))  # unfused: a matmul


def test_sdpa_math_mixer_same_weights():
    assert_mixer_matches_eager("softmax_sdpa_math", "fp32")


def test_sdpa_mixer_inputs_reach_the_fused_kernel():
    """The mixer's head split gives a strided v; SDPA would silently fall back to math without a copy."""
    t = torch.randn(2, 3 * 32, 4, 5, requires_grad=True)  # (B, 3C, H, W)
    q, k, v = split_heads(t, 3, 2)  # (B, h, N, d) views, d not innermost
    assert v.stride(-1) != 1
    assert kernel_of(get("softmax_sdpa").attend(q, k, v)) == "ScaledDotProductFlashAttentionForCpuBackward0"
    assert kernel_of(sdpa.sdpa_pinned("flash", q, k, v)) == "ScaledDotProductFlashAttentionForCpuBackward0"


def test_pinning_restores_flags_even_on_refusal():
    before = tuple(get_flag() for get_flag in sdpa._SDPA_GET)
    q = torch.randn(1, 1, 4, 8)
    sdpa.sdpa_pinned("math", q, q, q)
    with pytest.raises(RuntimeError):
        sdpa.sdpa_pinned("efficient", q, q, q)
    assert tuple(get_flag() for get_flag in sdpa._SDPA_GET) == before


def test_refused_backend_becomes_unavailable_with_reason(monkeypatch):
    """A device the backend has no kernel for: the probe says so, and a direct call raises the reason."""
    mech = get("softmax_sdpa_efficient")
    monkeypatch.setattr(mech, "devices", ("cpu", "cuda"))
    _reset(mech)
    try:
        ok, reason = mech.available("cpu")
        assert not ok and "fp32:" in reason and "No viable backend" in reason
        q = torch.randn(1, 2, 8, 16)
        with pytest.raises(MechanismUnavailable, match="refused the SDPA efficient backend"):
            mech.attend(q, q, q)
    finally:
        _reset(mech)


# -- flash-attn / FA3 / xformers glue, against the stand-ins -----------------------------------------------
@pytest.mark.parametrize(
    ("name", "dtype"),
    [("softmax_flash", "fp16"), ("softmax_flash", "bf16"), ("softmax_xformers", "fp32"), ("softmax_xformers", "bf16")],
)
def test_standin_op_matches_eager(standins, name, dtype):
    mech = standins[name]
    assert mech.available("cpu") == (True, "")
    module = importlib.import_module("flash_attn" if name == "softmax_flash" else "xformers.ops")
    assert_matches_eager(name, dtype)  # (B, N, h, d) storage, as workloads build it for layout "bnhd"
    q, k, v = (torch.randn(2, 3, 35, 16, dtype=TORCH_DTYPES[dtype]) for _ in range(3))  # contiguous (B, h, N, d)
    out = mech.op(q, k, v, grid=(5, 7))
    err_eager = rel_err(get("softmax_eager").op(q, k, v, grid=(5, 7)), attention_fp64(q, k, v))
    assert rel_err(out, attention_fp64(q, k, v)) <= 2 * err_eager + 1e-6
    assert module.CALLS == [(2, 35, 3, 16)] * 2  # the stand-in ran, on (B, N, h, d)


def test_fa3_preferred_on_hopper_and_tuple_unpacked(standins, monkeypatch):
    mech = standins["softmax_flash"]
    monkeypatch.setattr(external, "is_hopper", lambda device: True)
    assert mech._resolve("cpu").backend == "flash-attn-3"
    assert_matches_eager("softmax_flash", "bf16")  # FA3's (out, lse) tuple is unpacked
    assert sys.modules["flash_attn_interface"].CALLS and "flash_attn" not in sys.modules
    _reset(mech)
    monkeypatch.setattr(external, "is_hopper", lambda device: False)
    assert mech._resolve("cpu").backend == "flash-attn"  # not Hopper: FlashAttention-2
    monkeypatch.setattr(external, "_installed", lambda module: module == "flash_attn_interface")
    _reset(mech)
    ok, reason = mech.available("cpu")
    assert not ok and "needs a Hopper GPU" in reason


def test_standin_mixer_and_grads(standins):
    assert_mixer_matches_eager("softmax_flash", "bf16")  # v is strided in the mixer: the glue copies it
    assert_grads_match_eager("softmax_flash", "bf16")  # backward through the glue's transposes


def test_bnhd_inputs_reach_the_kernel_without_a_copy(standins):
    q = make_inputs("bnhd", "fp16", **SHAPE)[0]  # (B, h, N, d) view of (B, N, h, d) storage
    assert external.to_bnhd(q).is_contiguous() and external.to_bnhd(q).data_ptr() == q.data_ptr()


def test_wrong_layout_is_caught(standins, monkeypatch):
    """The checks can fail: (B, h, N, d) handed to a (B, N, h, d) kernel attends over heads, not tokens."""
    q, k, v = (torch.randn(2, 3, 35, 16, dtype=torch.float16) for _ in range(3))  # (B, h, N, d)
    wrong = importlib.import_module("flash_attn").flash_attn_func(q, k, v)  # what a glue without transposes computes
    assert rel_err(wrong, attention_fp64(q, k, v)) > 0.1
    monkeypatch.setattr(external, "to_bnhd", lambda x: x)  # a glue that forgets the layout
    with pytest.raises(AssertionError):
        assert_matches_eager("softmax_flash", "fp16")


def test_standin_contract_matches_the_real_kernels(standins):
    """The stand-ins refuse what the real kernels refuse, so glue bugs of that kind also show on CPU."""
    fa2 = importlib.import_module("flash_attn").flash_attn_func
    q = torch.randn(2, 35, 3, 16)
    with pytest.raises(RuntimeError, match="dtype"):
        fa2(q, q, q)  # fp32
    with pytest.raises(RuntimeError, match="contiguous last dimension"):
        fa2(*(q.half().transpose(-1, -2),) * 3)


# -- real backends on CUDA -------------------------------------------------------------------------------
GPU_DTYPES = ("fp16", "bf16")
SDPA_KERNELS = {
    "softmax_sdpa_flash": "ScaledDotProductFlashAttentionBackward0",
    "softmax_sdpa_efficient": "ScaledDotProductEfficientAttentionBackward0",
    "softmax_sdpa_cudnn": "ScaledDotProductCudnnAttentionBackward0",
}


def _need_cuda(name: str, dtype: str | None = None):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    mech = get(name)
    ok, reason = mech.available("cuda")
    if not ok:
        pytest.skip(f"{name} unavailable here: {reason}")
    if dtype is not None and dtype not in mech.dtypes:
        pytest.skip(f"{name} does not declare {dtype}")
    return mech


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("name", PINNED + EXTERNAL)
def test_gpu_backend_matches_eager(name, dtype):
    _need_cuda(name, dtype)
    for shape in (
        dict(batch=2, heads=3, height=14, width=14, head_dim=64),
        dict(batch=1, heads=2, height=7, width=7, head_dim=32),
    ):
        assert_matches_eager(name, dtype, device="cuda", **shape)
    assert_grads_match_eager(name, dtype, device="cuda", shape=(2, 3, 196, 64))
    assert_mixer_matches_eager(name, dtype, device="cuda", dim=128, heads=2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SDPA_KERNELS))
def test_gpu_pinned_sdpa_runs_its_kernel(name):
    mech = _need_cuda(name)
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    assert kernel_of(mech.op(q, q, q, grid=(8, 8))) == SDPA_KERNELS[name]
