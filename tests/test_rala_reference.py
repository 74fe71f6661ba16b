"""RALA against independent truths: the authors' outputs, a float64 statement of the math, the fused form.

- fixtures: outputs of the published code (tests/fixtures/rala/, made by scripts/make_rala_fixtures.py)
  for three mixers and a small RAVLT;
- `spec_rala_fp64` below: the steps of docs/rala.md "The RALA operator" written out in float64 here,
  with RoPE as a complex rotation per channel pair (not the code's rotate-pairs form);
- the fused (online-softmax) form must equal that definition to ~1e-12 for every block size;
- rala_compiled vs rala_eager: FlashAttention's test rule (docs/design.md "Verification"): the compiled
  operator's error against the fp64 truth may be at most 2x the eager fp32 operator's error + a small floor.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.layers import Rope2d
from attnbench.models import RAVLT
from attnbench.registry import get
from mechanisms.rala.fused_form import fused_rala, fused_state  # noqa: E402
from mechanisms.rala.naive import rala_op  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------------------------------------
# the math of docs/rala.md in float64, independent of the code under test
def spec_angle(d: int) -> torch.Tensor:
    base = [1.0 / 10000 ** (i / (d // 4 - 1)) if d // 4 > 1 else 1.0 for i in range(d // 4)]
    return torch.tensor([a for a in base for _ in (0, 1)], dtype=torch.float64)  # (d/2,) a0 a0 a1 a1 ...


def spec_theta(height: int, width: int, d: int) -> torch.Tensor:
    angle = spec_angle(d)
    theta = torch.empty(height * width, d, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            theta[row * width + col] = torch.cat([row * angle, col * angle])
    return theta  # (N, d)


def spec_rotate(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """R(x): each channel pair (a, b) as a + ib times exp(i * theta of that pair)."""
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())  # (..., N, d/2)
    turn = torch.polar(torch.ones_like(theta[:, ::2]), theta[:, ::2])  # (N, d/2)
    return torch.view_as_real(pairs * turn).flatten(-2)


def spec_kv_ksum(q, k, v, grid):
    """(KV (B,h,d,d), mean of reweighted k (B,h,d)) by the two-pass definition, float64."""
    q, k, v = (t.double() for t in (q, k, v))
    n, d = q.shape[-2:]
    phi_q, phi_k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    qbar = phi_q.mean(dim=-2)  # (B, h, d)
    alpha = torch.softmax(torch.einsum("bhd,bhnd->bhn", qbar, phi_k) / math.sqrt(d), dim=-1)  # (B, h, N)
    k_tilde = phi_k * alpha[..., None] * n
    kr = spec_rotate(k_tilde, spec_theta(*grid, d))
    kv = torch.einsum("bhnd,bhne->bhde", kr, v) / n  # mean over tokens of kr_m v_m^T
    return kv, k_tilde.mean(dim=-2), phi_q


def spec_rala_fp64(q, k, v, grid):
    kv, ksum, phi_q = spec_kv_ksum(q, k, v, grid)
    z = 1.0 / (torch.einsum("bhnd,bhd->bhn", phi_q, ksum) + 1e-6)  # un-rotated q
    qr = spec_rotate(phi_q, spec_theta(*grid, q.shape[-1]))
    return torch.einsum("bhnd,bhde->bhne", qr, kv) * z[..., None]


def qkv(batch, heads, n, d, *, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rala_64x1", "rala_192x2", "softmax_128x2"])
def test_mixer_matches_published(rala_fixtures, name):
    case = rala_fixtures["mixers"][name]
    mech = get("softmax_eager" if name.startswith("softmax") else "rala_eager")
    mixer = mech.mixer(case["dim"], case["heads"]).eval()
    mixer.load_state_dict(case["state_dict"], strict=True)
    rope = Rope2d(case["dim"] // case["heads"])
    rope.load_state_dict({"angle": case["angle"]})
    with torch.no_grad():
        y = mixer(case["x"], rope(tuple(case["x"].shape[-2:])))
    assert y.shape == case["y"].shape
    assert rel_err(y, case["y"]) <= 1e-5


def test_ravlt_small_matches_published(rala_fixtures):
    case = rala_fixtures["ravlt_small"]
    # the fixture's logits depend on the image, so matching them checks the whole network, not only the head
    assert rel_err(case["logits"][0], case["logits"][1]) > 0.05
    model = RAVLT(**case["config"]).eval()
    assert list(model.state_dict()) == list(case["state_dict"])  # same keys, same order
    model.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        logits = model(case["x"])
    assert logits.shape == case["logits"].shape == (2, 10)
    assert rel_err(logits, case["logits"]) <= 1e-5


def spec_rope(height: int, width: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    theta = spec_theta(height, width, d)
    return torch.sin(theta), torch.cos(theta)  # (N, d) each, float64


@pytest.mark.parametrize("shape", [(2, 1, 7, 9, 16), (1, 3, 5, 4, 64), (2, 2, 6, 6, 96)])
def test_rala_op_matches_spec_fp64(shape):
    batch, heads, height, width, d = shape
    q, k, v = qkv(batch, heads, height * width, d, dtype=torch.float64)
    truth = spec_rala_fp64(q, k, v, (height, width))
    rope = spec_rope(height, width, d)
    assert rel_err(rala_op(q, k, v, grid=(height, width), rope=rope), truth) <= 1e-12
    # default tables: the RoPE angle is a float32 buffer, so theta carries float32 rounding (~1e-7)
    assert rel_err(rala_op(q, k, v, grid=(height, width)), truth) <= 1e-6
    q32, k32, v32 = (t.float() for t in (q, k, v))
    assert rel_err(rala_op(q32, k32, v32, grid=(height, width)), truth) <= 1e-5  # fp32: ~100 x machine eps


@pytest.mark.parametrize("block", [1, 5, 16, 63, 64, 200])
def test_fused_form_equals_definition(block):
    height, width, d = 7, 9, 16  # N = 63
    q, k, v = qkv(2, 2, height * width, d, seed=3, dtype=torch.float64)
    rope = spec_rope(height, width, d)
    kv_ref, ksum_ref, _ = spec_kv_ksum(q, k, v, (height, width))
    kv, ksum = fused_state(q, k, v, grid=(height, width), block=block, rope=rope)
    assert rel_err(kv, kv_ref) <= 1e-12
    assert rel_err(ksum, ksum_ref) <= 1e-12
    out = fused_rala(q, k, v, grid=(height, width), block=block, rope=rope)
    assert rel_err(out, spec_rala_fp64(q, k, v, (height, width))) <= 1e-12


def test_fused_form_survives_large_scores():
    """Scores of several hundred: a one-pass sum without the running max would overflow exp()."""
    q, k, v = qkv(1, 1, 48, 16, seed=4, dtype=torch.float64)
    q, k = q * 30, k * 30
    out = fused_rala(q, k, v, grid=(6, 8), block=7, rope=spec_rope(6, 8, 16))
    assert torch.isfinite(out).all()
    assert rel_err(out, spec_rala_fp64(q, k, v, (6, 8))) <= 1e-12


def test_rala_compiled_available_here(monkeypatch, tmp_path):
    """This CPU has g++ and a working inductor; check() says so, remembers a passed check in the cache folder
    (the next process skips importing dynamo), and names the reason when it cannot - never remembered."""
    from attnbench.measure import compiler as compiled

    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "registry"))
    assert get("rala_compiled").available("cpu") == (True, "")
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    probes, real_probe = [], compiled.probe
    monkeypatch.setattr(compiled, "probe", lambda dev: probes.append(dev) or real_probe(dev))
    assert compiled.unavailable_reason("cpu") is None
    assert probes == ["cpu"] and len(list((tmp_path / "cache").glob("compile-ok-*.json"))) == 1
    assert compiled.unavailable_reason("cpu") is None
    assert probes == ["cpu"]  # read from the cache folder
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setattr(compiled, "cpp_compiler", lambda: None)
    assert "no C++ compiler" in compiled.unavailable_reason("cpu")
    monkeypatch.setattr(compiled, "cpp_compiler", lambda: "false")  # found, but compiles nothing
    assert "cannot build" in compiled.unavailable_reason("cpu")
    assert probes == ["cpu"] * 3  # both failures were probed, not read from a cache
    assert not list((tmp_path / "fresh").glob("compile-ok-*.json"))  # failures are checked again next time


def test_rala_core_halves_is_rala_op_for_any_tables():
    """rala_compiled's formulation (channel halves, alpha on phi(k), z before the rotation) is the reference
    function in exact arithmetic: fp64, random tables that do not repeat within a channel pair (so no
    property of the published tables is relied on), and the default tables."""
    from mechanisms.rala.compiled import rala_core_halves
    from mechanisms.rala.naive import default_rope

    q, k, v = (t.double() for t in qkv(2, 3, 35, 16, seed=5))
    gen = torch.Generator().manual_seed(6)
    random_tables = tuple(torch.randn(35, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    for rope in (random_tables, default_rope((5, 7), 16, q)):
        assert rel_err(rala_core_halves(q, k, v, *rope), rala_op(q, k, v, grid=(5, 7), rope=rope)) <= 1e-13


def test_default_rope_is_built_once_and_usable_everywhere(monkeypatch):
    """Op-level default tables are cached per (grid, d, dtype, device), equal to rope_tables, ordinary
    tensors even when first built under inference_mode (a later training call can save them for
    backward), and never cached while compiling (fake tensors)."""
    from attnbench.layers import rope_tables
    from mechanisms.rala.naive import default_rope

    q, k, v = qkv(1, 2, 12, 8, seed=3)
    with torch.inference_mode():
        first = default_rope((3, 4), 8, q)
    assert not any(t.is_inference() for t in first)
    assert all(a is b for a, b in zip(default_rope((3, 4), 8, q), first))
    assert all(torch.equal(a, b) for a, b in zip(first, rope_tables(3, 4, 8)))
    fp64 = default_rope((3, 4), 8, q.double())
    assert fp64[0].dtype == torch.float64 and fp64[0] is not first[0]
    q.requires_grad_(True)
    rala_op(q, k, v, grid=(3, 4)).sum().backward()
    assert torch.isfinite(q.grad).all()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert default_rope((3, 4), 8, q)[0] is not first[0]


@pytest.mark.slow  # one inductor compile: ~10-20 s on 2 cores when the inductor cache is cold
def test_rala_compiled_matches_eager_without_recompiling():
    import torch._dynamo.config as dynamo_config

    mech, eager = get("rala_compiled"), get("rala_eager")
    for i, (batch, heads, height, width) in enumerate([(3, 2, 7, 9), (2, 3, 5, 11)]):
        q, k, v = qkv(batch, heads, height * width, 16, seed=10 + i)
        truth = spec_rala_fp64(q, k, v, (height, width))
        # the second shape must reuse the first graph: dynamic=True, no per-shape recompilation
        with dynamo_config.patch(error_on_recompile=i > 0):
            out = mech.op(q, k, v, grid=(height, width))
        err_eager = (eager.op(q, k, v, grid=(height, width)).double() - truth).abs().max().item()
        err_compiled = (out.double() - truth).abs().max().item()
        floor = 1e-6 * truth.abs().max().item()
        assert err_compiled <= 2 * err_eager + floor, (err_compiled, err_eager)


@pytest.mark.slow  # compiles the forward and the backward graph: ~10-30 s on 2 cores with a cold cache
def test_rala_compiled_gradients_match_eager():
    """rala_compiled under autograd (the fwd_bwd pass): dq, dk, dv within the fp64-reference rule of eager's;
    the extra graph outputs phi(q), phi(k) are detached, so they take no gradient."""
    from mechanisms.rala.compiled import compiled_rala_core
    from mechanisms.rala.naive import default_rope

    mech, eager = get("rala_compiled"), get("rala_eager")
    grid = (5, 6)
    q64, k64, v64 = (t.double() for t in qkv(2, 2, 30, 16, seed=21))
    g = torch.randn(2, 2, 30, 16, generator=torch.Generator().manual_seed(22), dtype=torch.float64)

    def grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q64, k64, v64)]
        return torch.autograd.grad(fn(*leaves, grid=grid), leaves, g.to(dtype))

    truth = grads(lambda q, k, v, grid: rala_op(q, k, v, grid=grid), torch.float64)
    ref = grads(eager.op, torch.float32)
    got = grads(mech.op, torch.float32)
    for name, t, r, c in zip("qkv", truth, ref, got):
        err_c, err_e = (c.double() - t).abs().max().item(), (r.double() - t).abs().max().item()
        assert err_c <= 2 * err_e + 1e-6 * t.abs().max().item(), (name, err_c, err_e)
    args = [t.float().requires_grad_() for t in (q64, k64, v64)]
    outs = compiled_rala_core()(*args, *default_rope(grid, 16, args[0]))
    assert not outs[1].requires_grad and not outs[2].requires_grad
