"""The local family against the authors' published code: fixtures of their outputs.

tests/fixtures/local/<source>.pt hold the outputs of the authors' layers (run by scripts/make_local_fixtures.py)
on the seeded inputs and weights of tests/local_fixtures.py:
- swin: Swin's shifted/unshifted window attention with its relative position bias (SwinTransformerBlock's
  attention branch), checked by `WindowAttention2d` and the `window` mixers, and its windowed attention
  without bias, checked by the `window` op;
- swin_pad: Swin's detection backbone block on grids the window does not divide (zero padding, the shift mask
  of the padded grid), checked by the same mixers;
- nat: the NAT authors' pure-PyTorch neighborhood attention layer with its relative position bias, checked
  by `NeighborhoodAttention2d` and the `neighborhood` mixers;
- natten: NATTEN's `NeighborhoodAttention2D` (dilation, no bias: ours with rpb = 0) and `na2d` (the
  `neighborhood_eager` op).
The FlexAttention mechanisms' mixers run FlexAttention's eager path here (`compiled = False`: the same BlockMask
and score_mod, no compile per shape); their compiled ops are verified against the eager ones wherever they run.
The authors' parameters load into ours by name with strict=True: the same names, no renaming. Ours runs in
float32; the tolerance is the linear family's rule: max abs error at most 1e-5 times the output scale (max
|reference|). fp32 rounding of these sums is ~1e-7 relative; a misplaced bias entry, a wrong shift mask or a
wrong neighborhood at the border is off by orders of magnitude more.
"""

from __future__ import annotations

import local_fixtures as lf
import pytest
import torch

from attnbench.registry import get
from mechanisms.local.mixers import NeighborhoodAttention2d, WindowAttention2d

REL_TOL = 1e-5
MECHANISMS = {"swin": ("window", "window_flex"), "nat": ("neighborhood", "neighborhood_eager")}
MECHANISMS["natten"] = MECHANISMS["nat"]
MECHANISMS["swin_pad"] = MECHANISMS["swin"]
EAGER = ("window", "neighborhood_eager")
CLASSES = {"swin": WindowAttention2d, "swin_pad": WindowAttention2d, "nat": NeighborhoodAttention2d}
CLASSES["natten"] = NeighborhoodAttention2d


def max_rel_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()


def ids(cases: list[lf.Case]) -> list[str]:
    return [f"{case.source}-{case.key}" for case in cases]


def state(case: lf.Case, entry: dict) -> dict[str, torch.Tensor]:
    """The authors' parameters as our mixer's state dict; NATTEN has no bias table: ours is zero."""
    params = {name: value.float() for name, value in lf.parameters(entry["params"], case.seed).items()}
    if case.source == "natten":
        params["rpb"] = torch.zeros(lf.HEADS, 2 * case.size - 1, 2 * case.size - 1)
    return params


def run_mixer(mixer: torch.nn.Module, case: lf.Case) -> tuple[torch.Tensor, torch.Tensor]:
    fixture = lf.load(case.source)
    entry = fixture["cases"][case.key]
    mixer.load_state_dict(state(case, entry), strict=True)
    with torch.no_grad():
        ours = mixer(lf.to_map(lf.tokens(case)).float())
    return ours, entry["mixer"]


@pytest.mark.parametrize("case", lf.CASES, ids=ids(lf.CASES))
def test_mixer_class_matches_authors_layer(case):
    mixer = CLASSES[case.source](lf.DIM, lf.HEADS, **case.options)
    ours, theirs = run_mixer(mixer, case)
    err = max_rel_error(ours, theirs)
    assert err <= REL_TOL, f"{case.key} vs {lf.load(case.source)['upstream']}: max abs error {err:.2e} x scale"


def one_case_per_source() -> list[tuple[str, lf.Case]]:
    """Each registered mixer on the hardest case of each source (shifted windows; NAT's non-square kernel 5;
    dilation 2 on a grid it does not divide)."""
    picks = {"swin": "14x14_w7_s3_b1", "swin_pad": "10x6_w4_s2_b2", "nat": "10x13_k5_d1_b1", "natten": "15x13_k5_d2_b1"}
    by_key = {(case.source, case.key): case for case in lf.CASES}
    return [(name, by_key[source, key]) for source, key in picks.items() for name in MECHANISMS[source]]


def usable_here(name: str) -> None:
    ok, reason = get(name).available("cpu")
    if not ok:
        pytest.skip(f"{name}: {reason}")


@pytest.mark.parametrize(
    ("name", "case"), one_case_per_source(), ids=[f"{n}-{c.key}" for n, c in one_case_per_source()]
)
def test_registered_mixer_matches_authors_layer(name, case):
    usable_here(name)
    mixer = get(name).mixer(lf.DIM, lf.HEADS, **case.options)
    if get(name).compiled:  # FlexAttention: its eager path, the same BlockMask and score_mod (no compile per shape)
        mixer.compiled = False
    ours, theirs = run_mixer(mixer, case)
    err = max_rel_error(ours, theirs)
    assert err <= REL_TOL, f"{name} {case.key} vs {lf.load(case.source)['upstream']}: max abs error {err:.2e}"


def op_inputs(case: lf.Case, entry: dict) -> list[torch.Tensor]:
    if case.source == "swin":  # their q, k, v: their qkv projection of x, (B, N, 3, heads, d)
        params = lf.parameters(entry["params"], case.seed)
        x = lf.tokens(case).reshape(case.batch, -1, lf.DIM)
        parts = (x @ params["qkv.weight"].T + params["qkv.bias"]).reshape(case.batch, -1, 3, lf.HEADS, lf.HEAD_DIM)
        return [parts[:, :, i].transpose(1, 2) for i in range(3)]
    return lf.qkv(case)


# The eager ops on every case; the FlexAttention ops (compiled per shape, tens of seconds each on a CPU) are
# verified against these by the harness (their registered `reference`) wherever they run.
OP_CASES = [(name, case) for case in lf.CASES if case.has_op for name in MECHANISMS[case.source] if name in EAGER]


@pytest.mark.parametrize(("name", "case"), OP_CASES, ids=[f"{n}-{c.key}" for n, c in OP_CASES])
def test_op_matches_authors_attention(name, case):
    usable_here(name)
    fixture = lf.load(case.source)
    entry = fixture["cases"][case.key]
    q, k, v = (t.float() for t in op_inputs(case, entry))
    ours = get(name).op(q, k, v, grid=case.grid, **case.op_options)
    err = max_rel_error(ours, entry["op"])
    assert err <= REL_TOL, f"{name} op {case.key} vs {fixture['upstream']}: max abs error {err:.2e} x scale"


def test_fixtures_are_small_and_name_their_upstream():
    files = sorted(lf.FIXTURE_DIR.glob("*.pt"))
    assert {f.stem for f in files} == set(lf.SOURCES)
    assert sum(f.stat().st_size for f in files) < 200 * 1024
    for f in files:
        fixture = lf.load(f.stem)
        assert set(fixture["cases"]) == {case.key for case in lf.cases(f.stem)}
        repo_commit = fixture["upstream"].split(" ")[0]
        for name in MECHANISMS[f.stem]:  # the `checked against` column of `attnbench list` names it
            assert repo_commit in get(name).upstream, (name, get(name).upstream)
