"""Deterministic inputs of the linear-family fixtures, shared by scripts/make_linear_fixtures.py (which
runs the authors' modules on them) and tests/test_linear_upstream.py (which runs ours).

Nothing here computes an output: inputs and weights are seeded float64 Gaussians, so a fixture file
only has to hold the authors' outputs (and the names and shapes of their parameters).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "linear"
HEAD_DIM = 8
BATCH = 1
CASES = [((14, 14), 1), ((14, 14), 4), ((16, 16), 1), ((16, 16), 4)]  # (grid, heads): N = 196, 256
SPECIAL = ("scale", "power", "positional_encoding", "an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias")


def case_key(grid: tuple[int, int], heads: int) -> str:
    return f"{grid[0]}x{grid[1]}_h{heads}"


def case_seed(name: str, grid: tuple[int, int], heads: int) -> int:
    return zlib.crc32(f"{name}/{case_key(grid, heads)}".encode()) % 2**31


def gaussian(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def qkv(name: str, grid: tuple[int, int], heads: int, scale: float = 1.0) -> list[torch.Tensor]:
    """q, k, v, each (B, h, N, d) float64."""
    seed, n = case_seed(name, grid, heads), grid[0] * grid[1]
    return [gaussian((BATCH, heads, n, HEAD_DIM), seed + i, scale) for i in (1, 2, 3)]


def tokens(name: str, grid: tuple[int, int], heads: int, channels: int | None = None) -> torch.Tensor:
    """A layer input in the authors' token layout (B, N, C) float64 (C = heads * HEAD_DIM by default)."""
    seed, n = case_seed(name, grid, heads), grid[0] * grid[1]
    return gaussian((BATCH, n, channels or heads * HEAD_DIM), seed + 4)


def parameter_value(pname: str, shape, seed: int) -> torch.Tensor:
    """The value given to the authors' parameter `pname`: weights N(0, 1/fan_in), biases N(0, 0.1^2),
    the learned scales, powers, positional tables and agent biases N(0, 0.5^2) (non-trivial values)."""
    leaf = pname.split(".")[-1]
    if leaf in SPECIAL:
        std = 0.5
    elif leaf == "weight" and len(shape) >= 2:
        fan_in = 1
        for size in shape[1:]:
            fan_in *= size
        std = fan_in**-0.5
    else:
        std = 0.1
    return gaussian(tuple(shape), seed + zlib.crc32(pname.encode()) % 100_000, std)


def parameters(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Every parameter's value, float64, from its name and shape (what the fixture stores)."""
    return {pname: parameter_value(pname, shape, seed) for pname, shape in shapes.items()}


def load(name: str) -> dict:
    return torch.load(FIXTURE_DIR / f"{name}.pt", weights_only=True)
