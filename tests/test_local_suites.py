"""The local family in the shipped suites and in RAVLT's stages 1-2 (mixer swap, suites/models.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnbench.plan import plan
from attnbench.registry import names
from attnbench.suite import load_suite
from attnbench.models import RAVLT
from mechanisms.local.mixers import NeighborhoodAttention2d, WindowAttention2d

SUITES = Path(__file__).resolve().parents[1] / "suites"
LOCAL = {"window", "window_flex", "neighborhood", "neighborhood_eager"}
GPU_GRIDS = {14, 256}  # the gpu: blocks span 14^2 .. 256^2


def test_local_family_is_the_four_mechanisms():
    assert set(names(family="local")) == LOCAL


@pytest.mark.parametrize(
    ("suite", "on_cpu"),
    [
        ("resolution.yaml", {"window", "neighborhood"}),
        ("rala_kernels.yaml", LOCAL | {"softmax_flex"}),
        ("rala_kernels_h4.yaml", LOCAL | {"softmax_flex"}),
    ],
)
def test_shipped_suites_run_the_local_family(suite, on_cpu):
    cpu = plan(load_suite(SUITES / suite, ["device=cpu"]))
    ran = {c.mechanism for c in cpu if not c.skip}
    assert on_cpu <= ran, f"not run on the CPU: {sorted(on_cpu - ran)}"
    rala = {(c.level, c.height) for c in cpu if c.mechanism == "rala_eager"}
    for name in on_cpu:  # at RALA's shapes, so that the report sets them side by side
        assert {(c.level, c.height) for c in cpu if c.mechanism == name} == rala, name
    gpu = load_suite(SUITES / suite, ["device=cuda"])  # the gpu: block merged (cases plan; none runs here)
    assert LOCAL | {"softmax_flex"} <= {c.mechanism for c in plan(gpu)}
    assert GPU_GRIDS <= {h for h, _ in gpu.grids}


SMALL = dict(embed_dims=(32, 64, 128, 128), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 2), num_classes=10)


@pytest.mark.parametrize(
    ("mechanism", "cls"), [("window", WindowAttention2d), ("neighborhood", NeighborhoodAttention2d)]
)
def test_ravlt_runs_local_mixers_in_stages_1_2(mechanism, cls):
    """The command documented in suites/models.yaml plans RAVLT-T with the local mixer; a RAVLT (small widths) with
    it has the local mixer in every block of stages 1-2 and the published softmax in stages 3-4, and a training
    step reaches the relative position bias."""
    overrides = [f"mechanisms=[rala_eager, {mechanism}]", "models=[ravlt_t]", "device=cpu", "pass=[fwd]"]
    cases = plan(load_suite(SUITES / "models.yaml", overrides))
    assert {(c.mechanism, c.variant) for c in cases if not c.skip} == {
        ("rala_eager", "ravlt_t"),
        (mechanism, "ravlt_t"),
    }
    torch.manual_seed(0)
    model = RAVLT(**SMALL, mixer=mechanism)
    assert model.mixer_names == (mechanism, "softmax_eager")
    stages = [[type(block.attn) for block in layer.blocks] for layer in model.layers]
    assert all(kind is cls for stage in stages[:2] for kind in stage)
    assert not any(kind is cls for stage in stages[2:] for kind in stage)
    logits = model(torch.randn(1, 3, 64, 96))  # stage grids 16x24 and 8x12: window 7 pads, kernel 7 fits
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    attn = model.layers[1].blocks[1].attn
    table = attn.relative_position_bias_table if cls is WindowAttention2d else attn.rpb
    (grad,) = torch.autograd.grad(logits.square().sum(), [table])
    assert grad.abs().sum() > 0  # the relative position bias takes part
