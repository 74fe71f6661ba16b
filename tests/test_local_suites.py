"""The local family in the shipped suites and in RAVLT's stages 1-2 (mixer swap, suites/models.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnbench.models import RAVLT
from attnbench.plan import plan
from attnbench.registry import names
from attnbench.suite import load_suite
from mechanisms.local.mixers import NeighborhoodAttention2d, WindowAttention2d

SUITES = Path(__file__).resolve().parents[1] / "suites"
LOCAL = {"window", "window_flex", "neighborhood", "neighborhood_eager"}
EAGER = {"window", "neighborhood_eager"}  # on the CPU; the FlexAttention forms compile for about a minute there
GPU_GRIDS = {14, 256}  # the gpu: blocks span 14^2 .. 256^2
SMALL = dict(embed_dims=(32, 64, 128, 128), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 2), num_classes=10)


def test_local_family_is_the_four_mechanisms():
    assert set(names(family="local")) == LOCAL


@pytest.mark.parametrize("suite", ["resolution.yaml", "rala_kernels.yaml", "rala_kernels_h4.yaml"])
def test_shipped_suites_run_the_local_family(suite):
    cpu = plan(load_suite(SUITES / suite, ["device=cpu"]))
    ran = {c.mechanism for c in cpu if not c.skip}
    assert EAGER <= ran and not (LOCAL - EAGER) & ran, sorted(ran)
    rala = {(c.level, c.height) for c in cpu if c.mechanism == "rala_eager"}
    for name in EAGER:  # at RALA's shapes, so that the report sets them side by side
        assert {(c.level, c.height) for c in cpu if c.mechanism == name} == rala, name
    gpu = load_suite(SUITES / suite, ["device=cuda"])  # the gpu: block merged (cases plan; none runs here)
    assert LOCAL | {"softmax_flex", "rala_eager"} <= {c.mechanism for c in plan(gpu)}
    assert GPU_GRIDS <= {h for h, _ in gpu.grids}


@pytest.mark.parametrize(
    ("mechanism", "cls"), [("window", WindowAttention2d), ("neighborhood_eager", NeighborhoodAttention2d)]
)
def test_ravlt_runs_local_mixers_in_stages_1_2(mechanism, cls):
    """The command documented in suites/models.yaml plans RAVLT-T with the local mixers; a RAVLT (small widths)
    with one has it in every block of stages 1-2 and the published softmax in stages 3-4, and a training step
    reaches its relative position bias (the eager forms: FlexAttention has no backward on the CPU)."""
    overrides = ["mechanisms=[rala_eager, window, neighborhood]", "models=[ravlt_t]", "device=cpu"]
    cases = plan(load_suite(SUITES / "models.yaml", overrides))
    runs = {(m, "ravlt_t", p) for m in ("rala_eager", "window", "neighborhood") for p in ("fwd", "fwd_bwd")}
    no_backward = ("neighborhood", "ravlt_t", "fwd_bwd")  # FlexAttention has no backward on the CPU: planned skipped
    assert {(c.mechanism, c.variant, c.pass_) for c in cases if not c.skip} == runs - {no_backward}
    [skipped] = [c for c in cases if (c.mechanism, c.variant, c.pass_) == no_backward]
    assert skipped.skip.startswith("unsupported: FlexAttention has no backward on CPU"), skipped.skip
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
