"""The local family in the shipped suites and in RAVLT's stages 1-2 (mixer swap, suites/models.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnbench.plan import plan
from attnbench.registry import names
from attnbench.suite import load_suite
from attnbench.workloads.model import build_model_workload
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


@pytest.mark.parametrize(
    ("mechanism", "cls"), [("window", WindowAttention2d), ("neighborhood", NeighborhoodAttention2d)]
)
def test_models_suite_runs_ravlt_t_with_local_mixers_in_stages_1_2(mechanism, cls):
    """The command documented in suites/models.yaml, at a small image: the case plans, the model has the local
    mixer in every block of stages 1-2 and the published softmax in stages 3-4, and one step runs."""
    overrides = [f"mechanisms=[{mechanism}]", "models=[ravlt_t]", "device=cpu", "resolution=[64]", "pass=[fwd_bwd]"]
    (case,) = plan(load_suite(SUITES / "models.yaml", overrides))
    assert not case.skip and case.mechanism == mechanism and case.variant == "ravlt_t"
    work = build_model_workload(
        "ravlt_t", mechanism, batch=1, height=64, width=64, dtype="fp32", device="cpu", pass_="fwd_bwd"
    )
    model = work.module
    assert model.mixer_names == (mechanism, "softmax_eager")
    stages = [[type(block.attn) for block in layer.blocks] for layer in model.layers]
    assert all(kind is cls for stage in stages[:2] for kind in stage)
    assert not any(kind is cls for stage in stages[2:] for kind in stage)
    grads = work.fn()
    assert all(torch.isfinite(g).all() for g in grads)
    attn = model.layers[0].blocks[0].attn
    table = attn.relative_position_bias_table if cls is WindowAttention2d else attn.rpb
    grad_of = dict(zip([p for p in model.parameters() if p.requires_grad], grads))
    assert grad_of[table].abs().sum() > 0  # the relative position bias takes part in the training step
