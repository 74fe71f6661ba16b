"""Deterministic inputs of the local-family fixtures, shared by scripts/make_local_fixtures.py (which runs the
authors' layers on them) and tests/test_local_upstream.py (which runs ours).

Four fixture files, one per authors' code (tests/fixtures/local/<source>.pt):
- "swin": Swin's `SwinTransformerBlock` attention branch (`WindowAttention`, window partition, cyclic shift
  and its -100 attention mask), checked by the `window` mixers; its `WindowAttention` with a zero bias table
  and an identity output projection, checked by the `window` op;
- "swin_pad": Swin's detection backbone block, which zero-pads a grid that is not a multiple of the window
  (`BasicLayer`'s shift mask on the padded grid), checked by the `window` mixers;
- "nat": the NAT authors' pure-PyTorch `LegacyNeighborhoodAttention` (relative position bias `rpb`, no
  dilation), checked by the `neighborhood` mixers;
- "natten": NATTEN's `NeighborhoodAttention2D` (dilation; NATTEN has no relative position bias) and its
  `na2d` function, checked by the `neighborhood` mixers (rpb = 0) and ops.

Nothing here computes an output: inputs and weights are seeded float64 Gaussians, so a fixture file only
has to hold the authors' outputs (and the names and shapes of their parameters).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "local"
DIM = 16
HEADS = 2
HEAD_DIM = DIM // HEADS
BIAS_TABLES = ("relative_position_bias_table", "rpb")  # N(0, 1): a misplaced bias entry shows


@dataclass(frozen=True)
class Case:
    source: str  # "swin", "swin_pad", "nat" or "natten"
    grid: tuple[int, int]
    size: int  # Swin's window, NA's kernel
    shift: int = 0  # Swin only
    dilation: int = 1  # NA only
    batch: int = 1

    @property
    def key(self) -> str:
        extra = f"_s{self.shift}" if self.windows else f"_d{self.dilation}"
        return f"{self.grid[0]}x{self.grid[1]}_{'w' if self.windows else 'k'}{self.size}{extra}_b{self.batch}"

    @property
    def windows(self) -> bool:
        return self.source.startswith("swin")

    @property
    def options(self) -> dict:
        """The mixer's / op's keywords (docs/mechanisms.md, local family)."""
        if self.windows:
            return {"window": self.size, "shift": self.shift}
        return {"kernel": self.size, "dilation": self.dilation}

    @property
    def op_options(self) -> dict:
        options = dict(self.options)
        options.pop("shift", None)
        return options

    @property
    def has_op(self) -> bool:
        """Whether the fixture holds the authors' parameter-free attention on this case (Swin: unshifted only)."""
        return self.source == "natten" or (self.source == "swin" and self.shift == 0)

    @property
    def seed(self) -> int:
        return zlib.crc32(f"{self.source}/{self.key}".encode()) % 2**31


CASES = [
    # Swin: windows of 7 (one window, 2x2 windows, shifted by 3), a non-square 3x4-window grid shifted by 2
    Case("swin", (7, 7), 7),
    Case("swin", (14, 14), 7),
    Case("swin", (14, 14), 7, shift=3),
    Case("swin", (12, 16), 4, shift=2),
    # Swin's detection backbone: grids the window does not divide (zero padding), unshifted and shifted (batch 2)
    Case("swin_pad", (9, 11), 7),
    Case("swin_pad", (9, 11), 7, shift=3),
    Case("swin_pad", (10, 6), 4, shift=2, batch=2),
    # NAT (rpb): kernel 7 on 14x14 and on 7x7 (the whole grid), kernels 3 and 5 on non-square grids
    Case("nat", (14, 14), 7),
    Case("nat", (7, 7), 7),
    Case("nat", (9, 11), 3),
    Case("nat", (10, 13), 5),
    # NATTEN (dilation): no dilation, DiNAT's dilation 2 and 3 on grids that it does and does not divide
    Case("natten", (9, 10), 5),
    Case("natten", (14, 14), 3, dilation=2),
    Case("natten", (15, 13), 5, dilation=2),
    Case("natten", (9, 12), 3, dilation=3),
]
SOURCES = ("swin", "swin_pad", "nat", "natten")


def cases(source: str) -> list[Case]:
    return [case for case in CASES if case.source == source]


def gaussian(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def tokens(case: Case) -> torch.Tensor:
    """The layer input in the authors' layout (B, H, W, C), float64."""
    return gaussian((case.batch, *case.grid, DIM), case.seed + 1)


def qkv(case: Case) -> list[torch.Tensor]:
    """q, k, v of the op fixtures, each (B, heads, N, d) float64 (NATTEN's op; Swin's op takes its q, k, v
    from its qkv projection of `tokens`, see tests/test_local_upstream.op_inputs)."""
    n = case.grid[0] * case.grid[1]
    return [gaussian((case.batch, HEADS, n, HEAD_DIM), case.seed + i) for i in (2, 3, 4)]


def parameter_value(pname: str, shape, seed: int) -> torch.Tensor:
    """Weights N(0, 1/fan_in), biases N(0, 0.1^2), relative position bias tables N(0, 1)."""
    leaf = pname.split(".")[-1]
    if leaf in BIAS_TABLES:
        std = 1.0
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


def to_map(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, C, H, W)
    return t.permute(0, 3, 1, 2).contiguous()


def load(source: str) -> dict:
    return torch.load(FIXTURE_DIR / f"{source}.pt", weights_only=True)
