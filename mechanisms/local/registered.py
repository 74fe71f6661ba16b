"""The local family's registrations (window, window_flex, neighborhood, neighborhood_eager) and softmax_flex.

Costs (mechanisms/common.py conventions): `flops` counts the attended (query, key) pairs only, 4 d FLOPs per
pair and head (QK^T and PV, a multiply-add = 2), fwd_bwd 3.5x as for every softmax core; `flops_computed`
counts what the implementation computes: the padded windows of `window`, the gathered k x k keys of
`neighborhood_eager` (equal to `flops`), and for the FlexAttention forms every non-empty BLOCK x BLOCK tile of
the BlockMask in full (flex.block_counts). Mixer level adds the layer's qkv and proj (2 x 4 C^2 per token, 3x
for fwd_bwd) on the grid the layer runs on (padded as the mixer pads it), and its attention on that grid.
Bytes: the flash-style minimum, q, k, v read and the output written once (op); x read, y written and the
weights read once (mixer).
"""

from __future__ import annotations

from typing import Any

from attnbench.dtypes import DTYPE_BYTES
from attnbench.measure.compiler import unavailable_reason
from attnbench.registry import Mechanism, Shape, register_mechanism
from mechanisms.common import SOFTMAX_CORE_FWD_BWD, op_bytes, pass_factor
from mechanisms.local import geometry, ops
from mechanisms.local.flex import BLOCK, backward_reason, block_counts, import_problem
from mechanisms.local.mixers import NeighborhoodAttention2d, WindowAttention2d
from mechanisms.softmax.base import CITE_ATTN, SoftmaxBase

CITE_SWIN = "Liu et al., Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, ICCV 2021"
CITE_NAT = "Hassani et al., Neighborhood Attention Transformer, CVPR 2023"
CITE_DINAT = "Hassani & Shi, Dilated Neighborhood Attention Transformer, 2022"
CITE_FLEX = "Dong et al., Flex Attention: A Programming Model for Generating Optimized Attention Kernels, 2024"


def _layer_flops(tokens: int, dim: int) -> float:
    """qkv (C -> 3C) and proj (C -> C) linears of one item, forward."""
    return 2.0 * tokens * 4 * dim * dim


class LocalBase(Mechanism):
    """Shared by the local family: options, variant, costs, and the case checks (shape, backward on CPU)."""

    pattern = ""  # geometry pattern: "window" | "neighborhood"
    option_defaults: dict[str, Any] = {}  # every option (suite key `options:`) and its default
    mixer_only: tuple[str, ...] = ()  # options that configure the mixer only (Swin's shift)
    op_only: tuple[str, ...] = ()  # options that configure the op only (the token order)
    uses_flex = False

    # -- options ------------------------------------------------------------------------------------
    def resolve(self, options: dict[str, Any], level: str = "op") -> dict[str, Any]:
        """The options at `level` with their defaults (those of the other level left out)."""
        unknown = set(options) - set(self.option_defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown options {sorted(unknown)} (known: {sorted(self.option_defaults)})")
        other = self.op_only if level == "mixer" else self.mixer_only
        return {key: options.get(key, default) for key, default in self.option_defaults.items() if key not in other}

    def variant(self, level: str, options: dict[str, Any]) -> str:
        if level not in ("op", "mixer"):
            return ""
        resolved = self.resolve(options, level)
        return " ".join(f"{key}={val}" for key, val in sorted(resolved.items()) if val != self.option_defaults[key])

    def level_options(self, options: dict[str, Any], level: str) -> dict[str, Any]:
        """The resolved options that shape the work at `level` (the mixers keep row-major order: `tile` 0)."""
        return {"tile": 0, **self.resolve(options, level)}

    def pattern_options(self, options: dict[str, Any]) -> dict[str, int]:
        """The geometry options of the pattern (window, or kernel and dilation)."""
        keys = ("window",) if self.pattern == "window" else ("kernel", "dilation")
        return {key: int(options[key]) for key in keys}

    def reference_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The pattern's options (window and shift; kernel and dilation) configure the eager reference too."""
        return {key: val for key, val in options.items() if key in self.option_defaults and key not in self.op_only}

    # -- the case checks ------------------------------------------------------------------------------
    def check(self, device: str | None) -> str | None:
        if not self.uses_flex:
            return None
        return import_problem() or unavailable_reason(device)

    def case_reason(
        self, *, level: str, pass_: str, device: str, grid: tuple[int, int] | None, options: dict
    ) -> str | None:
        if self.uses_flex and pass_ != "fwd":
            reason = backward_reason(device)
            if reason:
                return f"unsupported: {reason}"
        if self.pattern == "neighborhood" and level == "op":
            try:
                opts = self.pattern_options(self.resolve(options))
            except (TypeError, ValueError, KeyError):
                return None  # a bad option is reported when the case runs
            return geometry.grid_problem(grid, opts["kernel"], opts["dilation"])
        return None

    # -- costs ----------------------------------------------------------------------------------------
    def layer_grid(self, s: Shape, level: str, options: dict[str, Any]) -> tuple[int, int]:
        """The grid the attention runs on: the case's grid at op level, the mixer's padded grid at mixer level."""
        return (s.height, s.width)

    def pairs(self, grid: tuple[int, int], options: dict[str, Any]) -> float:
        return float(geometry.attended_pairs(self.pattern, grid, **self.pattern_options(options)))

    def computed_pairs(self, grid: tuple[int, int], options: dict[str, Any]) -> float:
        raise NotImplementedError

    def _flops(self, s: Shape, level: str, pass_: str, options: dict[str, Any], computed: bool) -> float:
        if level not in ("op", "mixer"):
            raise ValueError(f"no analytic FLOPs for level {level!r}")
        resolved = self.level_options(options, level)
        grid = self.layer_grid(s, level, resolved)
        pairs = self.computed_pairs(grid, resolved) if computed else self.pairs(grid, resolved)
        core = 4.0 * s.batch * s.heads * pairs * s.head_dim * pass_factor(pass_, SOFTMAX_CORE_FWD_BWD)
        if level == "op":
            return core
        return core + s.batch * _layer_flops(grid[0] * grid[1], s.dim) * pass_factor(pass_)

    def flops(self, s: Shape, *, level: str, pass_: str, **options: Any) -> float:
        return self._flops(s, level, pass_, options, computed=False)

    def flops_computed(self, s: Shape, *, level: str, pass_: str, **options: Any) -> float:
        """FLOPs of what the implementation computes (see the module docstring)."""
        return self._flops(s, level, pass_, options, computed=True)

    def bytes(self, s: Shape, *, level: str, dtype: str, **options: Any) -> float:
        if level == "op":
            return op_bytes(s, dtype)
        if level == "mixer":
            mixer = self.resolve(options, "mixer")
            params = 4 * s.dim * s.dim + 4 * s.dim + self.bias_params(s.heads, mixer)
            return float((2 * s.batch * s.tokens * s.dim + params) * DTYPE_BYTES[dtype])
        raise ValueError(f"no analytic bytes for level {level!r}")

    def bias_params(self, heads: int, options: dict[str, Any]) -> int:
        raise NotImplementedError


class WindowBase(LocalBase):
    pattern = "window"
    upstream = (
        "microsoft/Swin-Transformer@f82860bf models/swin_transformer.py; "
        "SwinTransformer/Swin-Transformer-Object-Detection@c7b20110 mmdet/models/backbones/swin_transformer.py"
    )
    option_defaults = {"window": 7, "shift": 0}
    mixer_only = ("shift",)
    mixer_core = "sdpa"

    def op(self, q, k, v, *, grid, window: int = 7):
        return ops.window_attention(q, k, v, grid=grid, window=window)

    def mixer(self, dim, num_heads, *, window: int = 7, shift: int = 0):
        return WindowAttention2d(dim, num_heads, window=window, shift=shift, core=self.mixer_core)

    def layer_grid(self, s, level, options):
        if level == "op":
            return (s.height, s.width)
        w = options["window"]
        return (-(-s.height // w) * w, -(-s.width // w) * w)

    def computed_pairs(self, grid, options):
        """One SDPA over the padded windows: every window computes w^4 pairs."""
        w = options["window"]
        return float(-(-grid[0] // w) * -(-grid[1] // w) * w**4)

    def bias_params(self, heads, options):
        return (2 * options["window"] - 1) ** 2 * heads


class NeighborhoodBase(LocalBase):
    pattern = "neighborhood"
    upstream = (
        "SHI-Labs/Neighborhood-Attention-Transformer@1dbdc531 classification/natten/nattentorch.py; "
        "SHI-Labs/NATTEN@8c8729f4 src/natten/modules.py"
    )
    option_defaults = {"kernel": 7, "dilation": 1}
    mixer_core = "gather"

    def mixer(self, dim, num_heads, *, kernel: int = 7, dilation: int = 1):
        return NeighborhoodAttention2d(dim, num_heads, kernel=kernel, dilation=dilation, core=self.mixer_core)

    def layer_grid(self, s, level, options):
        if level == "op":
            return (s.height, s.width)
        least = options["kernel"] * options["dilation"]
        return (max(s.height, least), max(s.width, least))

    def pairs(self, grid, options):
        problem = geometry.grid_problem(grid, options["kernel"], options["dilation"])
        if problem:  # a case that is skipped as an impossible shape: what the pattern would attend, clipped
            return float(min(grid[0], options["kernel"]) * min(grid[1], options["kernel"]) * grid[0] * grid[1])
        return super().pairs(grid, options)

    def computed_pairs(self, grid, options):
        """The eager form gathers exactly each query's k x k keys."""
        return self.pairs(grid, options)

    def bias_params(self, heads, options):
        return (2 * options["kernel"] - 1) ** 2 * heads


class FlexComputed:
    """`flops_computed` of a FlexAttention form: every non-empty BLOCK x BLOCK tile of its BlockMask."""

    def computed_pairs(self, grid, options):
        geo = self.pattern_options(options)
        if self.pattern == "neighborhood" and geometry.grid_problem(grid, geo["kernel"], geo["dilation"]):
            return self.pairs(grid, options)
        blocks, _ = block_counts(self.pattern, grid, options.get("tile", 0), **geo)
        return float(blocks * BLOCK * BLOCK)

    def block_note(self, s: Shape, *, level: str, **options: Any) -> str:
        """'block mask: B of T blocks of 128x128 non-empty (E% empty; ideal I%)': the BlockMask's sparsity at `s`
        beside the ideal one, the share of the N^2 (query, key) pairs that are not attended."""
        resolved = self.level_options(options, level)
        grid = self.layer_grid(s, level, resolved)
        geo = self.pattern_options(resolved)
        blocks, total = block_counts(self.pattern, grid, resolved.get("tile", 0), **geo)
        n = grid[0] * grid[1]
        ideal = 1 - self.pairs(grid, resolved) / (n * n)
        empty = 1 - blocks / total
        size = f"{BLOCK}x{BLOCK}"
        return f"block mask: {blocks} of {total} blocks of {size} non-empty ({empty:.1%} empty; ideal {ideal:.1%})"


@register_mechanism("window", family="local", backend="torch-sdpa", reference=None, cite=CITE_SWIN)
class Window(WindowBase):
    """Swin's window attention: partition into w x w windows, one SDPA call (padded keys masked)."""


@register_mechanism(
    "window_flex", family="local", backend="torch-flex", reference="window", cite=f"{CITE_SWIN}; {CITE_FLEX}"
)
class WindowFlex(FlexComputed, WindowBase):
    """`window` through compiled FlexAttention with a cached BlockMask (unpadded grid)."""

    uses_flex = True
    compiled = True
    flop_counter_safe = False
    repeatable_backward = False
    mixer_core = "flex"

    def op(self, q, k, v, *, grid, window: int = 7):
        return ops.window_flex(q, k, v, grid=grid, window=window)


@register_mechanism(
    "neighborhood_eager", family="local", backend="torch", reference=None, cite=f"{CITE_NAT}; {CITE_DINAT}"
)
class NeighborhoodEager(NeighborhoodBase):
    """The readable reference: gather each query's k x k neighbourhood (NATTEN's border rule, dilation)."""

    def op(self, q, k, v, *, grid, kernel: int = 7, dilation: int = 1):
        return ops.neighborhood_attention_eager(q, k, v, grid=grid, kernel=kernel, dilation=dilation)


@register_mechanism(
    "neighborhood",
    family="local",
    backend="torch-flex",
    reference="neighborhood_eager",
    cite=f"{CITE_NAT}; {CITE_DINAT}; {CITE_FLEX}",
)
class Neighborhood(FlexComputed, NeighborhoodBase):
    """Neighbourhood attention through compiled FlexAttention with a cached BlockMask; `tile` > 0 orders the
    tokens in tiles of tile x (128 / tile) so neighbourhoods fill whole blocks."""

    option_defaults = {"kernel": 7, "dilation": 1, "tile": 0}
    op_only = ("tile",)
    uses_flex = True
    compiled = True
    flop_counter_safe = False
    repeatable_backward = False
    mixer_core = "flex"

    def op(self, q, k, v, *, grid, kernel: int = 7, dilation: int = 1, tile: int = 0):
        return ops.neighborhood_flex(q, k, v, grid=grid, kernel=kernel, dilation=dilation, tile=tile)


@register_mechanism(
    "softmax_flex", family="softmax", backend="torch-flex", reference="softmax_eager", cite=f"{CITE_ATTN}; {CITE_FLEX}"
)
class SoftmaxFlex(SoftmaxBase):
    """Dense softmax attention through compiled FlexAttention (no block mask)."""

    compiled = True
    flop_counter_safe = False
    repeatable_backward = False

    def attend(self, q, k, v):
        return ops.softmax_flex(q, k, v)

    def check(self, device: str | None) -> str | None:
        return import_problem() or unavailable_reason(device)

    def case_reason(
        self, *, level: str, pass_: str, device: str, grid: tuple[int, int] | None, options: dict
    ) -> str | None:
        reason = backward_reason(device) if pass_ != "fwd" else None
        return f"unsupported: {reason}" if reason else None
