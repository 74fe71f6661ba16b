"""The local family against independent truths.

- NATTEN's border rule as its reference kernels state it (`natten_window_start`, `natten_pb_start` below, with
  their dilation branches) against mechanisms/local/geometry.py's sub-grid formulation;
- every operator against masked softmax in float64, the mask built here token by token;
- the FlexAttention forms' masks through FlexAttention's eager path (cheap), and the compiled kernel once (slow);
- the mixers against a transcription of Swin's WindowAttention/SwinTransformerBlock and a per-query NAT loop;
- costs: attended pairs counted by hand, computed blocks counted from the dense mask, FlopCounterMode.
Gradients of the FlexAttention forms need a GPU (no FlexAttention backward on CPU): tests marked gpu.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from attnbench import registry
from attnbench.errors import MechanismUnavailable
from attnbench.measure.flops import count_flops
from attnbench.plan import skip_reason
from attnbench.registry import Shape, get
from mechanisms.local import flex, geometry, ops
from mechanisms.local.mixers import NeighborhoodAttention2d, WindowAttention2d

GRIDS = [(7, 7), (14, 14), (28, 21), (20, 17)]
NEIGHBORHOODS = [(7, 1), (3, 2), (5, 2), (3, 3)]  # (kernel, dilation)
LOCAL = ["window", "window_flex", "neighborhood", "neighborhood_eager"]


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def qkv(grid, b=1, h=2, d=8, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, grid[0] * grid[1], d, generator=gen, dtype=dtype) for _ in range(3)]


@pytest.fixture(autouse=True)
def _quiet_eager_flex():
    with warnings.catch_warnings():  # FlexAttention's eager path warns that it is not compiled
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


# -- NATTEN's rule, as its reference kernels state it -------------------------------------------------------
def natten_window_start(index, length, kernel, dilation):
    nb = kernel // 2
    if dilation <= 1:
        return max(index - nb, 0) + (index + nb >= length) * (length - index - nb - 1)
    ni = index - nb * dilation
    if ni < 0:
        return index % dilation
    if index + nb * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nb * dilation
        return a + imodd - kernel * dilation
    return ni


def natten_pb_start(index, length, kernel, dilation):
    nb = kernel // 2
    if dilation <= 1:
        return nb + (index < nb) * (nb - index) + (index + nb >= length) * (length - index - 1 - nb)
    if index - nb * dilation < 0:
        return kernel - 1 - index // dilation
    if index + nb * dilation >= length:
        return (length - index - 1) // dilation
    return nb


def natten_axis(length, kernel, dilation):
    """Per coordinate: its keys and their rpb indices, from NATTEN's two functions."""
    out = []
    for i in range(length):
        start, pb = natten_window_start(i, length, kernel, dilation), natten_pb_start(i, length, kernel, dilation)
        out.append(([start + t * dilation for t in range(kernel)], [pb + t for t in range(kernel)]))
    return out


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (7, 1), (3, 2), (5, 2), (3, 3), (5, 3), (7, 2)])
def test_border_rule_is_nattens(kernel, dilation):
    mixer = NeighborhoodAttention2d(4, 1, kernel=kernel, dilation=dilation)
    for length in range(kernel * dilation, kernel * dilation + 2 * dilation + 3):
        keys, valid = geometry.neighborhood_axis(length, kernel, dilation)
        offsets = mixer.offsets(length)
        for i, (want_keys, want_pb) in enumerate(natten_axis(length, kernel, dilation)):
            assert keys[i].tolist() == want_keys, (length, i)
            assert offsets[i, keys[i]].tolist() == want_pb, (length, i)
        assert valid.all()


def test_border_rule_by_hand_and_impossible_shapes():
    keys, _ = geometry.neighborhood_axis(7, 3, 1)
    assert keys[:, 0].tolist() == [0, 0, 1, 2, 3, 4, 4]  # windows shift inward at both borders
    keys, _ = geometry.neighborhood_axis(10, 3, 2)
    assert keys[0].tolist() == [0, 2, 4] and keys[8].tolist() == [4, 6, 8] and keys[3].tolist() == [1, 3, 5]
    keys, valid = geometry.window_axis(10, 4)
    assert keys[9].tolist()[:2] == [8, 9] and valid[9].tolist() == [True, True, False, False]
    assert geometry.grid_problem((14, 5), 3, 2) == (
        "impossible shape: a 3x3 neighbourhood with dilation 2 needs at least 6 tokens per axis, got 5"
    )
    q, k, v = qkv((5, 6))
    with pytest.raises(ValueError, match="impossible shape: a 7x7 neighbourhood"):
        get("neighborhood_eager").op(q, k, v, grid=(5, 6))
    with pytest.raises(ValueError, match="kernel must be odd"):
        get("neighborhood_eager").op(q, k, v, grid=(5, 6), kernel=2)


# -- operators vs masked softmax, the mask built token by token -------------------------------------------
def token_mask(pattern, grid, **options):
    """(N, N) bool from each token's coordinates: windows by w x w cell; neighbourhoods by NATTEN's starts."""
    height, width = grid
    if pattern == "window":
        w = options["window"]
        cell = [(r // w, c // w) for r in range(height) for c in range(width)]
        return torch.tensor([[a == b for b in cell] for a in cell])
    k, d = options["kernel"], options["dilation"]
    rows = [set(keys) for keys, _ in natten_axis(height, k, d)]
    cols = [set(keys) for keys, _ in natten_axis(width, k, d)]
    coords = [(r, c) for r in range(height) for c in range(width)]
    return torch.tensor([[kr in rows[qr] and kc in cols[qc] for kr, kc in coords] for qr, qc in coords])


def masked_softmax(q, k, v, mask):
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("grid", GRIDS)
def test_operators_match_masked_softmax(grid):
    q, k, v = qkv(grid, seed=sum(grid))
    truth = masked_softmax(q, k, v, token_mask("window", grid, window=7))
    assert rel_err(get("window").op(q, k, v, grid=grid), truth) < 1e-12
    for kernel, dilation in NEIGHBORHOODS:
        if geometry.grid_problem(grid, kernel, dilation):
            continue
        truth = masked_softmax(q, k, v, token_mask("neighborhood", grid, kernel=kernel, dilation=dilation))
        out = get("neighborhood_eager").op(q, k, v, grid=grid, kernel=kernel, dilation=dilation)
        assert rel_err(out, truth) < 1e-12, (kernel, dilation)


@pytest.mark.parametrize(
    "grid,pattern,options",
    [
        ((28, 21), "window", {"window": 7}),
        ((20, 17), "neighborhood", {"kernel": 7, "dilation": 1, "tile": 0}),
        ((20, 17), "neighborhood", {"kernel": 3, "dilation": 3, "tile": 8}),
        ((14, 14), "neighborhood", {"kernel": 5, "dilation": 2, "tile": 8}),
    ],
)
def test_flex_masks_match_masked_softmax(grid, pattern, options):
    """The FlexAttention forms' mask_mod, token order and plan, through FlexAttention's eager path."""
    q, k, v = qkv(grid, seed=sum(grid))
    geo = {key: val for key, val in options.items() if key != "tile"}
    truth = masked_softmax(q, k, v, token_mask(pattern, grid, **geo))
    fn = ops.window_flex if pattern == "window" else ops.neighborhood_flex
    assert rel_err(fn(*(t.float() for t in (q, k, v)), grid=grid, compiled=False, **options), truth) < 1e-5


def test_softmax_flex_is_dense_softmax():
    q, k, v = (t.float() for t in qkv((5, 6), h=3, d=16, seed=3))
    truth = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert rel_err(ops.softmax_flex(q, k, v, compiled=False), truth) < 1e-5


def test_tiled_order_is_a_permutation_of_tiles():
    order = geometry.token_order((5, 7), (2, 4))
    assert sorted(order.tolist()) == list(range(35))
    assert order[:8].tolist() == [0, 1, 2, 3, 7, 8, 9, 10]  # the first 2x4 tile, row-major inside
    assert order[8:14].tolist() == [4, 5, 6, 11, 12, 13]  # the second tile is cut by the grid's edge
    with pytest.raises(ValueError, match="divisor of the block size"):
        flex.tile_shape(3)


@pytest.mark.slow  # one inductor compile of flex_attention at one shape: ~15-30 s on 2 cores from a cold cache
def test_compiled_flex_forms_match_reference_in_one_graph():
    """window_flex and neighborhood (dilations, tiled order) through the registry's compiled kernel at one grid
    (20x17: 3 x 3 blocks, empty, partial or full): all share one graph, within the fp64 rule of the eager forms."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    grid = (20, 17)
    q, k, v = qkv(grid, b=2, h=2, d=16, seed=5)
    lo = [t.float() for t in (q, k, v)]
    before = counters["stats"]["unique_graphs"]
    cases = [("window_flex", "window", {"window": 7}), ("neighborhood", "neighborhood_eager", {"kernel": 7})]
    cases += [("neighborhood", "neighborhood_eager", {"kernel": 3, "dilation": 3, "tile": 8})]
    cases += [("window_flex", "window", {"window": 20})]  # one window over the grid: every block full
    assert flex.flex_plan("window", grid, (("window", 20),), 0, "cpu").full_blocks == 9
    for name, ref, options in cases:
        ref_opts = {key: val for key, val in options.items() if key != "tile"}
        truth = get(ref).op(q, k, v, grid=grid, **ref_opts)
        err_ref = rel_err(get(ref).op(*lo, grid=grid, **ref_opts), truth)
        err = rel_err(get(name).op(*lo, grid=grid, **options), truth)
        assert err <= 2 * err_ref + 16 * torch.finfo(torch.float32).eps, (name, options, err, err_ref)
    assert counters["stats"]["unique_graphs"] - before == 1


# -- availability, the planner's reasons ------------------------------------------------------------------
def test_flex_forms_refuse_gradients_on_cpu_and_the_planner_says_so():
    q, k, v = (t.float().requires_grad_() for t in qkv((7, 7)))
    for name in ("window_flex", "neighborhood", "softmax_flex"):
        with pytest.raises(MechanismUnavailable, match="no backward on CPU"):
            get(name).op(q, k, v, grid=(7, 7))
    common = dict(device="cpu", dtype="fp32", heads=2, dim=32, grid=(14, 14), options={})
    for name in ("window_flex", "neighborhood", "softmax_flex"):
        assert skip_reason(get(name), level="op", pass_="fwd", **common) is None
        reason = skip_reason(get(name), level="mixer", pass_="fwd_bwd", **common)
        assert reason.startswith("unsupported: FlexAttention has no backward on CPU"), reason
    for name in ("window", "neighborhood_eager"):
        assert skip_reason(get(name), level="op", pass_="fwd_bwd", **common) is None
    # a model with a flex mixer in stages 1-2: planned as skipped too, for a training step
    model = dict(device="cpu", dtype="fp32", heads=None, dim=None)
    reason = skip_reason(get("neighborhood"), level="model", pass_="fwd_bwd", **model)
    assert reason.startswith("unsupported: FlexAttention has no backward on CPU"), reason
    assert skip_reason(get("neighborhood"), level="model", pass_="fwd", **model) is None
    assert skip_reason(get("neighborhood_eager"), level="model", pass_="fwd_bwd", **model) is None
    small = {**common, "grid": (6, 10)}
    assert skip_reason(get("neighborhood_eager"), level="op", pass_="fwd", **small).startswith(
        "impossible shape: a 7x7 neighbourhood with dilation 1 needs at least 7 tokens per axis, got 6"
    )
    assert skip_reason(get("neighborhood_eager"), level="mixer", pass_="fwd", **small) is None  # the layer pads
    opts = {**small, "options": {"kernel": 3, "dilation": 2}}
    assert skip_reason(get("neighborhood"), level="op", pass_="fwd", **opts) is None


def test_unavailable_with_a_reason_where_flexattention_is_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)  # as on an old torch
    assert flex.import_problem().startswith("FlexAttention is missing: torch")
    for name in ("window_flex", "neighborhood", "softmax_flex"):
        mech = get(name)
        monkeypatch.setattr(mech, "_avail_cache", {}, raising=False)
        ok, reason = mech.available("cpu")
        assert not ok and "FlexAttention is missing" in reason
    assert get("window").available("cpu") == (True, "")


# -- mixers --------------------------------------------------------------------------------------------------
def swin_reference(layer: WindowAttention2d, x):
    """Swin's SwinTransformerBlock attention part (pad, roll, window_partition, WindowAttention with its mask,
    window_reverse, roll back, crop), transcribed for (B, C, H, W) input."""
    b, c, height, width = x.shape
    w, s, heads = layer.window, layer.shift, layer.num_heads
    x = x.permute(0, 2, 3, 1)
    pad_b, pad_r = (w - height % w) % w, (w - width % w) % w
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = height + pad_b, width + pad_r

    def partition(t):  # (B, H, W, C) -> (nW*B, w*w, C)
        bb, hh, ww, cc = t.shape
        t = t.view(bb, hh // w, w, ww // w, w, cc).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(-1, w * w, cc)

    mask = None
    if s:
        img = torch.zeros(1, hp, wp, 1)
        cnt = 0
        for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                img[:, hs, ws, :] = cnt
                cnt += 1
        mw = partition(img).squeeze(-1)
        mask = (mw.unsqueeze(1) - mw.unsqueeze(2)).ne(0).float() * -100.0
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
    xw = partition(x)
    bw, n, _ = xw.shape
    qkv_ = layer.qkv(xw).reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv_[0] * (c // heads) ** -0.5, qkv_[1], qkv_[2]
    attn = q @ k.transpose(-2, -1)
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    index = rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]
    bias = layer.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    attn = attn + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(bw // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    out = layer.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))
    out = out.view(b, hp // w, wp // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if s:
        out = torch.roll(out, shifts=(s, s), dims=(1, 2))
    return out[:, :height, :width].permute(0, 3, 1, 2)


def nat_reference(layer: NeighborhoodAttention2d, x):
    """NAT per query: NATTEN's window starts and rpb indices, logits q.k * scale + rpb, softmax (NAT's padding)."""
    b, c, height, width = x.shape
    kern, dil, heads = layer.kernel, layer.dilation, layer.num_heads
    hp, wp = max(height, kern * dil), max(width, kern * dil)
    x = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, wp - width, 0, hp - height))
    q, k, v = layer.qkv(x).reshape(b, hp, wp, 3, heads, c // heads).permute(3, 0, 4, 1, 2, 5)
    rows, cols = natten_axis(hp, kern, dil), natten_axis(wp, kern, dil)
    out = torch.zeros_like(q)
    for i in range(hp):
        for j in range(wp):
            (kr, pr), (kc, pc) = rows[i], cols[j]
            keys = k[:, :, kr][:, :, :, kc].flatten(2, 3)  # (B, h, k*k, d)
            vals = v[:, :, kr][:, :, :, kc].flatten(2, 3)
            bias = layer.rpb[:, pr][:, :, pc].flatten(1)  # (h, k*k)
            logits = (q[:, :, i, j, None, :] * layer.scale * keys).sum(-1) + bias
            out[:, :, i, j] = (logits.softmax(-1).unsqueeze(-1) * vals).sum(-2)
    y = layer.proj(out.permute(0, 2, 3, 1, 4).reshape(b, hp, wp, c))
    return y[:, :height, :width].permute(0, 3, 1, 2)


@pytest.mark.parametrize("grid,shift,with_flex", [((14, 14), 0, False), ((14, 14), 3, True), ((10, 9), 2, True)])
def test_window_mixer_is_swins_layer(grid, shift, with_flex):
    torch.manual_seed(1)
    layer = WindowAttention2d(16, 2, window=7, shift=shift).double()
    with torch.no_grad():
        layer.relative_position_bias_table.normal_()
    x = torch.randn(2, 16, *grid, dtype=torch.float64)
    truth = swin_reference(layer, x)
    assert rel_err(layer(x), truth) < 1e-12
    assert set(layer.state_dict()) == {
        "qkv.weight",
        "qkv.bias",
        "relative_position_bias_table",
        "proj.weight",
        "proj.bias",
    }
    if not with_flex:
        return
    flex_layer = WindowAttention2d(16, 2, window=7, shift=shift, core="flex")
    flex_layer.load_state_dict(layer.float().state_dict(), strict=True)
    flex_layer.compiled = False
    with torch.no_grad():
        assert rel_err(flex_layer(x.float()), truth) < 1e-5


@pytest.mark.parametrize(
    "grid,kernel,dilation,with_flex", [((9, 8), 3, 1, False), ((9, 11), 3, 2, True), ((5, 7), 3, 2, False)]
)
def test_neighborhood_mixer_is_nats_layer(grid, kernel, dilation, with_flex):
    torch.manual_seed(2)
    layer = NeighborhoodAttention2d(8, 2, kernel=kernel, dilation=dilation).double()
    with torch.no_grad():
        layer.rpb.normal_()
    x = torch.randn(1, 8, *grid, dtype=torch.float64)
    truth = nat_reference(layer, x)
    assert rel_err(layer(x), truth) < 1e-12
    assert set(layer.state_dict()) == {"qkv.weight", "qkv.bias", "rpb", "proj.weight", "proj.bias"}
    if not with_flex:
        return
    flex_layer = NeighborhoodAttention2d(8, 2, kernel=kernel, dilation=dilation, core="flex")
    flex_layer.load_state_dict(layer.float().state_dict(), strict=True)
    flex_layer.compiled = False
    with torch.no_grad():
        assert rel_err(flex_layer(x.float()), truth) < 1e-5


def test_registry_mixers_take_the_options():
    assert get("window").mixer(16, 2, window=5, shift=2).shift == 2
    assert get("window_flex").mixer(16, 2).core == "flex"
    assert get("neighborhood").mixer(16, 2, kernel=5, dilation=2).dilation == 2
    assert get("neighborhood_eager").mixer(16, 2).core == "gather"
    assert get("neighborhood").variant("op", {"dilation": 2, "tile": 8}) == "dilation=2 tile=8"
    assert get("window").variant("mixer", {"shift": 3}) == "shift=3"
    assert get("window").variant("op", {"window": 7, "shift": 3}) == ""  # shift configures the mixer only
    assert get("neighborhood").variant("mixer", {"tile": 8}) == ""  # the mixers keep row-major order
    with pytest.raises(TypeError, match="unknown options"):
        get("window").variant("op", {"kernel": 3})


# -- costs -----------------------------------------------------------------------------------------------------
def test_flops_count_attended_pairs_and_computed_blocks():
    s = Shape(batch=2, heads=3, height=20, width=17, head_dim=16, dim=48)
    per_pair = 4 * 16 * 2 * 3
    window_pairs = (49 + 49 + 36) * (49 + 49 + 9)  # windows of 7, 7, 6 rows and 7, 7, 3 columns
    assert get("window").flops(s, level="op", pass_="fwd") == per_pair * window_pairs
    assert get("window_flex").flops(s, level="op", pass_="fwd") == per_pair * window_pairs
    assert get("window").flops_computed(s, level="op", pass_="fwd") == per_pair * 9 * 49 * 49  # 3x3 padded windows
    for kernel, dilation in [(7, 1), (3, 3)]:
        pairs = 20 * 17 * kernel**2
        opts = dict(kernel=kernel, dilation=dilation)
        assert get("neighborhood").flops(s, level="op", pass_="fwd", **opts) == per_pair * pairs
        assert get("neighborhood_eager").flops_computed(s, level="op", pass_="fwd", **opts) == per_pair * pairs
        for tile in (0, 8):
            order = geometry.token_order((20, 17), flex.tile_shape(tile))
            mask = token_mask("neighborhood", (20, 17), **opts)
            if order is not None:
                mask = mask[order][:, order]
            nb = math.ceil(340 / 128)
            padded = F.pad(mask, (0, nb * 128 - 340, 0, nb * 128 - 340))
            blocks = int(padded.reshape(nb, 128, nb, 128).any(3).any(1).sum())
            got = get("neighborhood").flops_computed(s, level="op", pass_="fwd", tile=tile, **opts)
            assert got == per_pair * blocks * 128 * 128, (opts, tile)
            note = get("neighborhood").block_note(s, level="op", tile=tile, **opts)
            assert note.startswith(f"block mask: {blocks} of {nb * nb} blocks of 128x128 non-empty")
    fwd = get("neighborhood").flops(s, level="op", pass_="fwd")
    assert get("neighborhood").flops(s, level="op", pass_="fwd_bwd") == 3.5 * fwd


@pytest.mark.parametrize("name,grid", [("window", (14, 14)), ("neighborhood_eager", (9, 8))])
def test_mixer_flops_match_flop_counter(name, grid):
    mech, dim, heads = get(name), 16, 2
    s = Shape(batch=1, heads=heads, height=grid[0], width=grid[1], head_dim=dim // heads, dim=dim)
    mixer, x = mech.mixer(dim, heads), torch.randn(1, dim, *grid)
    with torch.no_grad():
        counted = count_flops(lambda: mixer(x))
    assert counted == pytest.approx(mech.flops(s, level="mixer", pass_="fwd"), rel=1e-9)


def test_every_local_mechanism_is_registered_with_its_reference():
    assert registry.names(family="local") == sorted(LOCAL)
    assert get("neighborhood").reference == "neighborhood_eager" and get("window_flex").reference == "window"
    assert get("softmax_flex").family == "softmax" and get("softmax_flex").reference == "softmax_eager"
    assert all(get(n).compiled for n in ("window_flex", "neighborhood", "softmax_flex"))
    assert set(get("window").levels) == {"op", "mixer"}


# -- GPU: the compiled kernels' gradients (FlexAttention has a backward there) ----------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "name,ref,options",
    [
        ("window_flex", "window", {"window": 7}),
        ("neighborhood", "neighborhood_eager", {"kernel": 7, "dilation": 1}),
        ("neighborhood", "neighborhood_eager", {"kernel": 3, "dilation": 3, "tile": 8}),
        ("softmax_flex", "softmax_eager", {}),
    ],
)
def test_gpu_flex_gradients_within_the_fp64_rule(name, ref, options):
    """Output and dq, dk, dv of the compiled form in fp32: relative RMS error vs the eager reference in float64
    at most twice the eager reference's own fp32 error (+ a floor)."""
    grid = (20, 17)
    ref_opts = {key: val for key, val in options.items() if key != "tile"}
    q64, k64, v64 = (t.cuda() for t in qkv(grid, b=2, h=2, d=32, seed=7))
    g = torch.randn_like(q64)

    def run(mech, dtype, **opts):
        leaves = [t.to(dtype).requires_grad_() for t in (q64, k64, v64)]
        out = mech.op(*leaves, grid=grid, **opts)
        return [out, *torch.autograd.grad(out, leaves, g.to(dtype))]

    truth = run(get(ref), torch.float64, **ref_opts)
    eager = run(get(ref), torch.float32, **ref_opts)
    got = run(get(name), torch.float32, **options)
    for t, e, c in zip(truth, eager, got):
        assert rel_err(c, t) <= 2 * rel_err(e, t) + 16 * torch.finfo(torch.float32).eps


def test_verification_keeps_a_grid_the_reduced_one_cannot_take():
    """Verification reduces large grids to 32 x 32; a neighbourhood of 5 x 5 with dilation 8 needs 40 per axis,
    so the case is verified on its own grid (batch 1) instead of failing there."""
    from attnbench.verify import verify_case
    from attnbench.workloads.inputs import CaseInputs

    mech, shape = get("neighborhood_eager"), Shape(batch=2, heads=1, height=40, width=40, head_dim=8, dim=8)
    verdict = verify_case(CaseInputs(mech, "op", shape, "fp32", "cpu", "fwd", {"kernel": 5, "dilation": 8}))
    assert verdict.ok and "reduced shape B1 40x40" in verdict.note
    verdict = verify_case(CaseInputs(mech, "op", shape, "fp32", "cpu", "fwd", {"kernel": 3, "dilation": 2}))
    assert verdict.ok and "reduced shape B1 32x32" in verdict.note


def test_a_run_writes_both_flop_counts_and_their_rates():
    """In-process run: `window` at 10x10 (padded to 14x14 windows) writes flops (attended pairs),
    flops_computed (the padded windows) and both rates."""
    from attnbench import api

    df = api.run(
        {
            "name": "local-costs",
            "mechanisms": ["window"],
            "level": "op",
            "dim": 16,
            "heads": 2,
            "resolution": [10],
            "batch": 1,
            "dtype": "fp32",
            "pass": "fwd",
            "device": "cpu",
            "warmup": 1,
            "repeats": {"min": 3, "max": 3, "min_time_s": 0.0},
            "rounds": 1,
            "metrics": ["latency", "flops"],
        }
    )
    rows = df[(df["mechanism"] == "window") & (df["pass"] == "fwd")].set_index("metric")
    per_pair = 4 * 8 * 2
    assert rows.loc["flops", "value"] == per_pair * (49 + 9) ** 2  # windows of 7 and 3 per axis
    assert rows.loc["flops_computed", "value"] == per_pair * 4 * 49**2  # 2 x 2 padded windows
    latency = df[(df["mechanism"] == "window") & (df["pass"] == "fwd") & (df["metric"] == "latency")]
    median_s = latency[latency["stat"] == "median"]["value"].iloc[0] / 1e3
    for count, rate in [("flops", "achieved_tflops"), ("flops_computed", "achieved_tflops_computed")]:
        assert rows.loc[rate, "value"] == pytest.approx(rows.loc[count, "value"] / median_s / 1e12, rel=1e-6)


def test_the_reference_runs_the_candidates_pattern():
    """A candidate verified against neighborhood_eager with kernel 3, dilation 2: the reference takes the same
    pattern (`reference_options`), at op level (else its 7 x 7 output differs) and mixer level (else its rpb
    has another shape and the candidate's state dict does not load)."""
    from attnbench.verify import verify_case
    from attnbench.workloads.inputs import CaseInputs
    from mechanisms.local.registered import NeighborhoodEager

    registry.register_mechanism("test_local_candidate", family="test", reference="neighborhood_eager")(
        type("Candidate", (NeighborhoodEager,), {})
    )
    try:
        mech, shape = get("test_local_candidate"), Shape(batch=1, heads=2, height=9, width=8, head_dim=8, dim=16)
        for level in ("op", "mixer"):
            verdict = verify_case(CaseInputs(mech, level, shape, "fp32", "cpu", "fwd", {"kernel": 3, "dilation": 2}))
            assert verdict.ok and verdict.reference == "neighborhood_eager", (level, verdict)
    finally:
        registry.unregister("test_local_candidate")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name,ref,options",
    [("window_flex", "window", {"shift": 3}), ("neighborhood", "neighborhood_eager", {"dilation": 2})],
)
def test_gpu_flex_mixer_gradients_within_the_fp64_rule(name, ref, options):
    """The flex mixers (bias and shift mask as a score_mod, their gradients through it) against the eager
    mixers with the same parameters: output and every gradient within the fp64 rule."""
    import copy

    torch.manual_seed(3)
    layer = get(ref).mixer(32, 2, **options)
    x64 = torch.randn(2, 32, 20, 17, dtype=torch.float64, device="cuda")
    g = torch.randn_like(x64)

    def run(module, dtype):
        module = copy.deepcopy(module).to(device="cuda", dtype=dtype)
        x = x64.to(dtype).requires_grad_()
        out = module(x)
        return [out, *torch.autograd.grad(out, [x, *module.parameters()], g.to(dtype))]

    flex_layer = get(name).mixer(32, 2, **options)
    flex_layer.load_state_dict(layer.state_dict(), strict=True)
    truth, eager, got = run(layer, torch.float64), run(layer, torch.float32), run(flex_layer, torch.float32)
    for t, e, c in zip(truth, eager, got):
        assert rel_err(c, t) <= 2 * rel_err(e, t) + 16 * torch.finfo(torch.float32).eps
