"""The linear family against the authors' published code: fixtures of their outputs.

tests/fixtures/linear/<mechanism>.pt hold the outputs of the authors' modules (run by
scripts/make_linear_fixtures.py, float64) on the seeded inputs and weights of tests/linear_fixtures.py,
at N = 196 and 256 tokens and h = 1 and 4 heads (d = 8). Ours runs in float32 on the same inputs and
weights (their parameters mapped onto ours); the tolerance is the issue's rule: max abs error at most
1e-5 times the output scale (max |reference|). fp32 rounding of these sums is ~1e-7 relative; a wrong
formula is off by orders of magnitude more (e.g. InLine's mean(v) predictor: 0.3 of the scale).
"""

from __future__ import annotations

import linear_fixtures as lf
import pytest
import torch

from attnbench.layers import Rope2d
from attnbench.registry import get
from mechanisms.linear.performer import favor_attention

REL_TOL = 1e-5
OP_FIXTURES = [
    "linear_elu",
    "linear_relu",
    "efficient_attention",
    "performer",
    "cosformer",
    "nystromformer",
    "mlla",
    "inline",
]
MIXER_FIXTURES = ["flatten", "agent", "inline", "polaformer", "mlla", "cosformer", "efficient_attention"]
CASE_IDS = [lf.case_key(grid, heads) for grid, heads in lf.CASES]


def max_rel_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()


def conv1x1(w: torch.Tensor) -> torch.Tensor:
    return w if w.dim() == 4 else w[:, :, None, None]


def linear(x: torch.Tensor, params: dict, prefix: str) -> torch.Tensor:  # (B, N, C_in) -> (B, N, C_out)
    return x @ params[f"{prefix}.weight"].T + params[f"{prefix}.bias"]


def heads_of(t: torch.Tensor, heads: int) -> torch.Tensor:  # (B, N, C) -> (B, h, N, d)
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


# -- mapping the authors' parameters onto our mixers ----------------------------------------------------
def shell_state(params: dict, q: str | list, kv: list, proj: str, gate=None) -> dict:
    """qkvo from the authors' projections (lists of (name, rows) pieces), proj from theirs."""
    pieces = [q, *kv] + ([gate] if gate else [])
    weight = torch.cat([conv1x1(params[f"{name}.weight"])[rows] for name, rows in pieces])
    bias = torch.cat([params[f"{name}.bias"][rows] for name, rows in pieces])
    return {
        "qkvo.weight": weight,
        "qkvo.bias": bias,
        "proj.weight": conv1x1(params[f"{proj}.weight"]),
        "proj.bias": params[f"{proj}.bias"],
    }


def our_state(name: str, params: dict, channels: int) -> dict:
    c, every = channels, slice(None)
    if name in ("flatten", "agent", "inline"):
        state = shell_state(params, ("q", every), [("kv", every)], "proj")
        taken = ("q.", "kv.", "proj.")
    elif name == "polaformer":  # their qg = [q; g], kv = [k; v]
        state = shell_state(params, ("qg", slice(0, c)), [("kv", every)], "proj", gate=("qg", slice(c, 2 * c)))
        taken = ("qg.", "kv.", "proj.")
    elif name == "cosformer":
        state = shell_state(params, ("q_proj", every), [("k_proj", every), ("v_proj", every)], "out_proj")
        return state
    elif name == "efficient_attention":
        state = shell_state(params, ("queries", every), [("keys", every), ("values", every)], "reprojection")
        return state
    elif name == "mlla":
        rename = {
            "in_proj": "in_proj",
            "act_proj": "act_proj",
            "dwc": "dwc",
            "attn.qk": "qk",
            "attn.lepe": "lepe",
            "out_proj": "out_proj",
        }
        state = {
            f"{ours}.{leaf}": params[f"{theirs}.{leaf}"]
            for theirs, ours in rename.items()
            for leaf in ("weight", "bias")
        }
        return {key: conv1x1(value) if key.endswith("weight") else value for key, value in state.items()}
    else:
        raise KeyError(name)
    state.update({f"operator.{key}": value for key, value in params.items() if not key.startswith(taken)})
    return state


def mixer_options(name: str, entry: dict, grid: tuple[int, int]) -> dict:
    if name in ("flatten", "polaformer"):
        return {"pos_grid": grid[0]}
    if name == "agent":
        return {"agent_num": int(entry["agent_num"]), "window": grid[0]}
    return {}


# -- the op's inputs as the authors' module formed them ------------------------------------------------
def op_inputs(name: str, entry: dict, grid: tuple[int, int], heads: int, seed: int):
    if name == "inline":  # q, k, v = their q / kv projections of x
        params, x = lf.parameters(entry["params"], seed), lf.tokens(name, grid, heads)
        kv = linear(x, params, "kv")
        c = x.shape[-1]
        return heads_of(linear(x, params, "q"), heads), heads_of(kv[..., :c], heads), heads_of(kv[..., c:], heads)
    if name == "mlla":  # v = x; q, k = their qk projection of x
        params, x = lf.parameters(entry["op_params"], seed), lf.tokens(name, grid, heads)
        qk = linear(x, params, "qk")
        c = x.shape[-1]
        return heads_of(qk[..., :c], heads), heads_of(qk[..., c:], heads), heads_of(x, heads)
    return lf.qkv(name, grid, heads)


@pytest.mark.parametrize("case", CASE_IDS)
@pytest.mark.parametrize("name", OP_FIXTURES)
def test_op_matches_authors_code(name, case):
    fixture = lf.load(name)
    entry = fixture["cases"][case]
    grid, heads = dict((lf.case_key(g, h), (g, h)) for g, h in lf.CASES)[case]
    q, k, v = (t.float() for t in op_inputs(name, entry, grid, heads, lf.case_seed(name, grid, heads)))
    if name == "performer":  # their random features: the op's formula with their W
        ours = favor_attention(q, k, v, entry["projection"].float())
        operator = get(name).mixer(heads * lf.HEAD_DIM, heads).operator
        operator.projection.copy_(entry["projection"])
        torch.testing.assert_close(operator(q, k, v, grid=grid), ours, rtol=0, atol=0)
    else:
        ours = get(name).op(q, k, v, grid=grid)
    err = max_rel_error(ours, entry["op"])
    assert err <= REL_TOL, f"{name} op vs {fixture['upstream']}: max abs error {err:.2e} x output scale"


@pytest.mark.parametrize("case", CASE_IDS)
@pytest.mark.parametrize("name", MIXER_FIXTURES)
def test_mixer_matches_authors_layer(name, case):
    fixture = lf.load(name)
    entry = fixture["cases"][case]
    grid, heads = dict((lf.case_key(g, h), (g, h)) for g, h in lf.CASES)[case]
    channels = heads * lf.HEAD_DIM
    mixer = get(name).mixer(channels, heads, **mixer_options(name, entry, grid))
    params = lf.parameters(entry["params"], lf.case_seed(name, grid, heads))
    mixer.load_state_dict({key: value.float() for key, value in our_state(name, params, channels).items()})
    x = lf.tokens(name, grid, heads).float().transpose(1, 2).reshape(lf.BATCH, channels, *grid)  # (B, C, H, W)
    with torch.no_grad():
        ours = mixer(x, Rope2d(lf.HEAD_DIM)(grid))
    err = max_rel_error(ours, entry["mixer"])
    assert err <= REL_TOL, f"{name} mixer vs {fixture['upstream']}: max abs error {err:.2e} x output scale"


def test_fixtures_are_small_and_name_their_upstream():
    files = sorted(lf.FIXTURE_DIR.glob("*.pt"))
    assert {f.stem for f in files} == set(OP_FIXTURES) | set(MIXER_FIXTURES)
    assert sum(f.stat().st_size for f in files) < 2 * 1024**2
    for f in files:
        fixture = lf.load(f.stem)
        assert fixture["upstream"].split(" ")[0] in get(f.stem).upstream, f.stem  # docstring/registration agree
        assert set(fixture["cases"]) == set(CASE_IDS)


def test_list_shows_the_upstream_each_mechanism_matches():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, "-m", "attnbench", "list", "--family", "linear"],
        capture_output=True,
        text=True,
        cwd=repo,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "checked against" in proc.stdout
    for name in set(OP_FIXTURES) | set(MIXER_FIXTURES):
        line = next(row for row in proc.stdout.splitlines() if f" {name} " in row)
        assert lf.load(name)["upstream"].split(" ")[0] in line, line
