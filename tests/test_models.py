"""RAVLT structure against docs/rala.md: key manifest and parameter count derived here, not from the model.

Big variants are built on the meta device (no memory, no init); only RAVLT-T runs, at small sizes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from attnbench.models import RAVLT, RAVLT_CONFIGS, create_ravlt
from attnbench.models.counting import count_params, meta_model
from attnbench.models.ravlt import DropPath
from attnbench.registry import get

# docs/rala.md "RAVLT" table: dims, depths, heads; mlp ratio 3.5, projection 1024, layer scale on
SPEC = {
    "ravlt_t": ((64, 128, 256, 512), (2, 2, 6, 2), (1, 2, 4, 8)),
    "ravlt_s": ((64, 128, 320, 512), (3, 5, 9, 3), (1, 2, 5, 8)),
    "ravlt_b": ((96, 192, 384, 512), (4, 6, 12, 6), (1, 2, 6, 8)),
    "ravlt_l": ((96, 192, 448, 640), (4, 7, 19, 8), (1, 2, 7, 10)),
}
ENTRIES = {"ravlt_t": 302, "ravlt_s": 462, "ravlt_b": 622, "ravlt_l": 822}
SMALL = dict(
    embed_dims=(32, 64, 128, 128),
    depths=(1, 2, 1, 1),
    num_heads=(1, 1, 2, 2),
    num_classes=10,
    layerscales=(True,) * 4,
    layer_init_values=(1.0,) * 4,
)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv(prefix, cout, cin_per_group, k):
    return {f"{prefix}.weight": (cout, cin_per_group, k, k), f"{prefix}.bias": (cout,)}


def bn(prefix, c):
    return {f"{prefix}.{name}": ((c,) if name != "num_batches_tracked" else ()) for name in BN}


def manifest(dims, depths, heads, classes=1000, projection=1024):
    """key -> shape, from the spec's naming rules."""
    out, half = {}, dims[0] // 2
    for idx, (cout, cin) in zip((0, 3, 6, 9), ((half, 3), (half, half), (half, half), (dims[0], half))):
        out |= conv(f"patch_embed.proj.{idx}", cout, cin, 3) | bn(f"patch_embed.proj.{idx + 1}", cout)
    for i, (c, depth, h) in enumerate(zip(dims, depths, heads)):
        f = int(3.5 * c)
        out[f"layers.{i}.RoPE.angle"] = (c // h // 2,)
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}"
            out |= {f"{b}.gamma_1": (1, c, 1, 1), f"{b}.gamma_2": (1, c, 1, 1)}
            out |= conv(f"{b}.pos", c, 1, 3)
            for norm in ("norm1", "norm2"):
                out |= {f"{b}.{norm}.norm.weight": (c,), f"{b}.{norm}.norm.bias": (c,)}
            out |= conv(f"{b}.attn.qkvo", 4 * c, c, 1) | conv(f"{b}.attn.lepe", c, 1, 5)
            out |= conv(f"{b}.attn.proj", c, c, 1)
            out |= conv(f"{b}.ffn.fc1", f, c, 1) | conv(f"{b}.ffn.dwconv", f, 1, 3) | conv(f"{b}.ffn.fc2", c, f, 1)
        if i < 3:
            down = f"layers.{i}.downsample"
            out |= conv(f"{down}.reduction", dims[i + 1], c, 3) | bn(f"{down}.norm", dims[i + 1])
    out |= conv("proj", projection, dims[-1], 1) | bn("norm", projection) | conv("head", classes, projection, 1)
    return out


def closed_form_params(dims, depths, classes=1000, projection=1024):
    """Parameter count (no buffers), term by term."""
    half = dims[0] // 2
    total = (27 * half + half) + 2 * (9 * half * half + half) + (9 * half * dims[0] + dims[0])  # stem convs
    total += 2 * (3 * half + dims[0])  # stem BN weight + bias
    for i, (c, depth) in enumerate(zip(dims, depths)):
        f = int(3.5 * c)
        block = 2 * c + 10 * c  # gammas, pos (9c + c)
        block += 4 * c  # norm1, norm2
        block += (4 * c * c + 4 * c) + (25 * c + c) + (c * c + c)  # qkvo, lepe, proj
        block += (c * f + f) + (9 * f + f) + (f * c + c)  # fc1, dwconv, fc2
        total += depth * block
        if i < 3:
            total += 9 * c * dims[i + 1] + dims[i + 1] + 2 * dims[i + 1]  # reduction + BN
    total += dims[-1] * projection + projection + 2 * projection + projection * classes + classes
    return total


@pytest.mark.parametrize("name", list(SPEC))
def test_state_dict_matches_spec_manifest(name):
    model = meta_model(name)
    sd = model.state_dict()
    expected = manifest(*SPEC[name])
    assert len(expected) == ENTRIES[name]
    assert sorted(sd) == sorted(expected)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert count_params(model) == closed_form_params(SPEC[name][0], SPEC[name][1])


def test_defaults_are_the_published_mixers():
    model = meta_model("ravlt_t")
    assert model.mixer_names == ("rala_eager", "softmax_eager")
    assert model.layers[0].RoPE.angle.dtype == torch.float32


@pytest.fixture(scope="module")
def tiny_t():
    torch.manual_seed(0)
    return create_ravlt("ravlt_t", num_classes=10).eval()


@pytest.mark.parametrize("hw", [(64, 96), (96, 64), (64, 64)])
def test_non_square_inputs(tiny_t, hw):
    with torch.no_grad():
        y = tiny_t(torch.randn(2, 3, *hw))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_mixer_swap_gives_same_function():
    """softmax_sdpa in stages 1-2 with the weights of a softmax_eager model computes the same logits."""
    torch.manual_seed(1)
    eager = RAVLT(**SMALL, mixer="softmax_eager").eval()
    sdpa = RAVLT(**SMALL, mixer=get("softmax_sdpa")).eval()  # a Mechanism instance works too
    published = RAVLT(**SMALL).eval()
    published.load_state_dict(eager.state_dict(), strict=True)
    assert sdpa.mixer_names == ("softmax_sdpa", "softmax_eager")
    sdpa.load_state_dict(eager.state_dict(), strict=True)  # same key layout whatever the mixer
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = eager(x), sdpa(x)
        c = published(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, c)  # a different mixer is a different function


def test_late_mixer_swap():
    model = meta_model("ravlt_t", mixer_late="softmax_sdpa")
    assert model.mixer_names == ("rala_eager", "softmax_sdpa")


def test_init_follows_spec(tiny_t):
    w = tiny_t.layers[2].blocks[0].attn.qkvo.weight
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max().item() <= 2.0
    assert tiny_t.layers[0].blocks[0].ffn.fc1.bias.abs().max().item() == 0.0
    ln = tiny_t.layers[1].blocks[1].norm1.norm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    assert torch.equal(tiny_t.layers[3].blocks[1].gamma_2, torch.ones(1, 512, 1, 1))  # T: layer scale init 1


@pytest.mark.parametrize("name, inits", [("ravlt_b", (1, 1, 1e-6, 1e-6)), ("ravlt_l", (1e-6,) * 4)])
def test_layer_scale_init(name, inits):
    cfg = RAVLT_CONFIGS[name]
    assert cfg.layer_init_values == inits and cfg.layerscales == (True,) * 4
    small = RAVLT(
        embed_dims=(8, 16, 16, 16),
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        num_classes=2,
        layerscales=cfg.layerscales,
        layer_init_values=cfg.layer_init_values,
    )
    for layer, value in zip(small.layers, inits):
        gamma = layer.blocks[0].gamma_1
        assert torch.equal(gamma, torch.full_like(gamma, value))


def test_drop_path():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    dp = DropPath(0.25).train()
    y = dp(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, torch.tensor(4.0 / 3.0).item()}
    assert (per_sample.std(dim=1) == 0).all()  # whole samples are dropped
    assert abs(y.mean().item() - 1.0) < 0.05
    assert torch.equal(dp.eval()(x), x)
    rates = [blk.drop_path.p for layer in meta_model("ravlt_s").layers for blk in layer.blocks]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.15) < 1e-7 and len(rates) == 20


def test_models_package_does_not_import_mechanisms_or_triton():
    code = (
        "import sys, torch; before = 'triton' in sys.modules; "
        "import attnbench.models, attnbench.workloads.model, attnbench.models.counting; "
        "print('mechanisms' in sys.modules, ('triton' in sys.modules) == before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False True"


def test_unknown_model_name():
    from attnbench.errors import AttnbenchError

    with pytest.raises(AttnbenchError, match="ravlt_s"):
        create_ravlt("ravlt_x")


# --- model-level settings: channels_last, compile, amp (attnbench.workloads.model) -------------------------------
MODEL_SUITE = {
    "name": "settings",
    "mechanisms": ["rala_eager"],
    "level": "model",
    "models": ["ravlt_t"],
    "resolution": [32],
    "device": "cpu",
}


def _model_case(**settings):
    from attnbench.plan import plan
    from attnbench.suite import load_suite

    suite = load_suite({**MODEL_SUITE, **settings})
    (case,) = plan(suite)
    return suite, case


def test_model_settings_are_recorded_in_variant_and_case_id():
    _, plain = _model_case()
    cases = {
        "ravlt_t+cl": _model_case(channels_last=True)[1],
        "ravlt_t+compiled": _model_case(compile="model")[1],
        "ravlt_t+amp_fp16": _model_case(amp="fp16")[1],
        "ravlt_t+cl+compiled+amp_bf16": _model_case(channels_last=True, compile="model", amp="bf16")[1],
    }
    assert plain.variant == plain.model == "ravlt_t" and plain.options == ()
    for variant, case in cases.items():
        assert case.variant == variant and case.row_fields()["variant"] == variant and case.model == "ravlt_t"
    assert len({c.case_id for c in cases.values()} | {plain.case_id}) == 5
    assert cases["ravlt_t+cl+compiled+amp_bf16"].options_dict == {
        "amp": "bf16",
        "channels_last": True,
        "compile": "model",
    }
    assert _model_case(compile="none", amp="none", channels_last=False)[1] == plain  # the defaults change nothing


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"amp": "bf16", "dtype": "bf16"}, r"`amp: bf16` autocasts an fp32 model; set `dtype: fp32` \(got bf16\)"),
        ({"compile": "max"}, r"`compile` value 'max' is not one of none, model"),
        ({"amp": "fp8"}, r"`amp` value 'fp8' is not one of none, bf16, fp16"),
        ({"channels_last": "yes"}, r"`channels_last` must be true or false"),
        (
            {"level": "op", "channels_last": True},
            r"`channels_last` applies at level model only; add model to `level` or remove it",
        ),
    ],
)
def test_model_settings_errors(settings, message):
    from attnbench.errors import SuiteError

    with pytest.raises(SuiteError, match=message):
        _model_case(**settings)


def _workload(**options):
    from attnbench.workloads.model import build_model_workload

    return build_model_workload(
        "ravlt_t", "rala_eager", batch=1, height=32, width=32, dtype="fp32", device="cpu", pass_="fwd", options=options
    )


def _inside(work, module):
    """The input and output of `module` (a submodule of the workload's model) in one forward."""
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(input=args[0], output=out))
    try:
        with torch.no_grad():
            logits = work.forward()
    finally:
        handle.remove()
    return logits, seen["input"], seen["output"]


@pytest.fixture(scope="module")
def plain_workload():
    return _workload()


def test_channels_last_puts_model_and_activations_in_channels_last(plain_workload):
    nhwc = _workload(channels_last=True)
    cl = torch.channels_last
    logits, x, y = _inside(nhwc, nhwc.module.patch_embed.proj[3])  # the stem's second conv: an activation in
    assert x.is_contiguous(memory_format=cl) and not x.is_contiguous() and y.is_contiguous(memory_format=cl)
    assert nhwc.module.patch_embed.proj[3].weight.is_contiguous(memory_format=cl)
    ref, x_ref, _ = _inside(plain_workload, plain_workload.module.patch_embed.proj[3])
    assert x_ref.is_contiguous() and not x_ref.is_contiguous(memory_format=cl)
    assert torch.allclose(logits, ref, rtol=1e-4, atol=1e-5)  # the same function, another layout


def test_amp_autocasts_inside_the_forward(plain_workload):
    import attnbench.workloads.model as wm
    from attnbench.errors import AttnbenchError, MechanismUnavailable

    amp = _workload(amp="bf16")
    logits, x, y = _inside(amp, amp.module.layers[0].blocks[0].ffn.fc1)
    assert x.dtype == torch.float32 and y.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert amp.module.head.weight.dtype == torch.float32  # the weights stay fp32: autocast, not a cast
    logits, _, y = _inside(plain_workload, plain_workload.module.layers[0].blocks[0].ffn.fc1)
    assert y.dtype == logits.dtype == torch.float32
    with pytest.raises(AttnbenchError, match="amp: bf16 autocasts an fp32 model, but the case dtype is bf16"):
        wm.build_model_workload(
            "ravlt_t",
            None,
            batch=1,
            height=32,
            width=32,
            dtype="bf16",
            device="cpu",
            pass_="fwd",
            options={"amp": "bf16"},
        )
    for options, message in (
        ({"compile": "max"}, "compile must be one of none, model, got 'max'"),
        ({"amp": "fp8"}, "amp must be one of none, bf16, fp16, got 'fp8'"),
        ({"channels_last": "yes"}, "channels_last must be true or false, got 'yes'"),
    ):  # the API's options are checked as the suite's keys are
        with pytest.raises(AttnbenchError, match=message):
            _workload(**options)
    # fp16 on the CPU: allowed exactly when this torch autocasts a matmul to fp16 there
    with torch.autocast("cpu", dtype=torch.float16):
        fp16_on_cpu = torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float16
    assert (wm.autocast_problem("cpu", "fp16") is None) == fp16_on_cpu
    wm_available = torch.amp.is_autocast_available
    try:
        torch.amp.is_autocast_available = lambda kind: False
        with pytest.raises(MechanismUnavailable, match=r"amp: fp16: torch .* has no autocast on cpu"):
            _workload(amp="fp16")  # refused before the model is built
    finally:
        torch.amp.is_autocast_available = wm_available


@pytest.mark.slow  # dynamo traces the whole RAVLT-T once (backend eager: no code generation), ~5-25 s on 2 cores
def test_compile_model_writes_compile_rows(monkeypatch):
    import attnbench.workloads.model as wm
    from attnbench.execute import CaseExecutor

    monkeypatch.setattr(wm, "COMPILE_BACKEND", "eager")  # inductor's code generation is rala_compiled's test
    suite, case = _model_case(
        compile="model",
        warmup=1,
        rounds=1,
        retries=0,
        metrics=["latency"],
        repeats={"min": 3, "max": 3, "min_time_s": 0},
    )
    rows, _ = CaseExecutor(suite, "test").measure(case)
    by_metric = {r["metric"]: r for r in rows if r["stat"] in ("value", "median")}
    assert all(r["status"] == "ok" for r in rows), [(r["metric"], r["message"]) for r in rows]
    assert by_metric["compile_s"]["note"].startswith("model; first call after torch._dynamo.reset(): ")
    assert by_metric["compile_s"]["value"] > by_metric["latency"]["value"] / 1e3  # tracing on top of a call
    assert by_metric["recompiles"]["value"] == 0 and by_metric["latency"]["variant"] == "ravlt_t+compiled"
