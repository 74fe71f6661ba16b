"""A case's inputs, from one seeded factory (tritonbench's input iterator, one case at a time).

`CaseInputs` is a case resolved once: the registered mechanism, its `Shape`, dtype, device, pass and
options. Every tensor and module a case needs comes from its methods, so which seed makes which input
is written here only:
  q, k, v  seed + 0, 1, 2  (B, h, N, d); for layout "bnhd" (B, N, h, d) storage viewed as (B, h, N, d)
  x        seed + 10       (B, C, H, W): the mixer's input (C = dim), the model's image (C = 3)
  mixer    torch.manual_seed(seed), then mech.mixer(dim, heads, **options)
Values are drawn in fp32 on the CPU, then moved and cast, so a case has the same inputs on every
device. Timing and rank use seed 0; verification draws from the same factory with its own seed
(attnbench.verify.VERIFY_SEED), at a reduced shape for large cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from attnbench import registry
from attnbench.dtypes import TORCH_DTYPES
from attnbench.layers import Rope2d, RopeTables
from attnbench.registry import Mechanism, Shape, accepted_options

if TYPE_CHECKING:
    from attnbench.plan import Case

QKV_SEED = 0  # q, k, v: seed + 0, 1, 2
X_SEED = 10  # x: seed + 10


def seeded_randn(shape, *, dtype, device, seed: int, requires_grad: bool = False) -> torch.Tensor:
    """Deterministic normal inputs, generated in fp32 on CPU then moved (same values on every device)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


@dataclass(frozen=True)
class CaseInputs:
    """A case's mechanism, shape and settings, resolved once, and the seeded factory of its inputs."""

    mech: Mechanism
    level: str  # op | mixer | model
    shape: Shape  # heads, head_dim and dim are None at model level (height x width = image size there)
    dtype: str
    device: str
    pass_: str
    options: Mapping[str, Any] = field(default_factory=dict)  # the suite's options for the mechanism (or model)
    variant: str = ""  # the model name at level model
    seed: int = 0

    @classmethod
    def of(cls, case: Case, *, seed: int = 0) -> CaseInputs:
        """Resolve a planned case: its registered mechanism, its shape, its options."""
        shape = Shape(case.batch, case.heads, case.height, case.width, case.head_dim, case.dim)
        return cls(
            registry.get(case.mechanism),
            case.level,
            shape,
            case.dtype,
            case.device,
            case.pass_,
            case.options_dict,
            case.variant,
            seed,
        )

    def at(
        self, *, batch: int | None = None, height: int | None = None, width: int | None = None, seed: int | None = None
    ) -> CaseInputs:
        """The same case at another batch, grid or seed (verification's reduced shape)."""
        s = self.shape
        shape = replace(
            s,
            batch=s.batch if batch is None else batch,
            height=s.height if height is None else height,
            width=s.width if width is None else width,
        )
        return replace(self, shape=shape, seed=self.seed if seed is None else seed)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def grid(self) -> tuple[int, int]:
        return (self.shape.height, self.shape.width)

    def randn(
        self,
        shape,
        offset: int,
        *,
        dtype: torch.dtype | None = None,
        device: str | None = None,
        requires_grad: bool = False,
    ) -> torch.Tensor:
        """N(0, 1) of `shape` from seed + offset, in the case dtype on its device unless told otherwise."""
        return seeded_randn(
            shape,
            dtype=dtype or self.torch_dtype,
            device=device or self.device,
            seed=self.seed + offset,
            requires_grad=requires_grad,
        )

    def qkv(self, *, layout: str = "bhnd", requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
        """q, k, v, each (B, h, N, d), from seeds seed + 0, 1, 2; layout "bnhd": the values drawn as
        (B, N, h, d) storage, viewed as (B, h, N, d) (a mechanism whose op transposes for free)."""
        s = self.shape
        n = s.height * s.width
        if layout == "bnhd":
            return tuple(
                self.randn((s.batch, n, s.heads, s.head_dim), QKV_SEED + i)
                .transpose(1, 2)
                .requires_grad_(requires_grad)
                for i in range(3)
            )
        return tuple(
            self.randn((s.batch, s.heads, n, s.head_dim), QKV_SEED + i, requires_grad=requires_grad) for i in range(3)
        )

    def x(
        self,
        *,
        offset: int = X_SEED,
        dtype: torch.dtype | None = None,
        device: str | None = None,
        requires_grad: bool = False,
    ) -> torch.Tensor:
        """(B, C, H, W) from seed + offset: C = dim (mixer input) or 3 (the model's image)."""
        s = self.shape
        channels = 3 if self.level == "model" else s.dim
        return self.randn(
            (s.batch, channels, s.height, s.width), offset, dtype=dtype, device=device, requires_grad=requires_grad
        )

    def op_options(self) -> dict[str, Any]:
        """The case's options the op takes as keywords (mixer-only options such as gate or lepe dropped)."""
        return accepted_options(self.mech.op, dict(self.options))

    def mixer(self, options: Mapping[str, Any] | None = None) -> nn.Module:
        """torch.manual_seed(seed), then mech.mixer(dim, heads, **options); options default to the case's
        options the mixer takes. Built on the CPU in fp32: the caller moves and casts it."""
        torch.manual_seed(self.seed)
        opts = accepted_options(self.mech.mixer, dict(self.options)) if options is None else dict(options)
        return self.mech.mixer(self.shape.dim, self.shape.heads, **opts)

    def rope(self, rope: Rope2d | None = None, *, dtype: torch.dtype | None = None) -> RopeTables:
        """RoPE tables (sin, cos), each (N, head_dim), of `rope` (default a fresh Rope2d(head_dim)) in the case
        dtype (or `dtype`) on the case device."""
        rope = rope if rope is not None else Rope2d(self.shape.head_dim)
        return rope.to(device=self.device, dtype=dtype or self.torch_dtype)(self.grid)
