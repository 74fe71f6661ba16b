"""The one dtype table: a dtype's name as suites and rows write it -> torch dtype, bytes, eps, tolerance.

`DTYPES` are the names a suite, a registration and a peak probe may use; fp64 is in the table for
references (verify, rank) only. `eps` is torch.finfo(dtype).eps, written out so that importing this
module does not import torch (the registry imports it); `tolerance` is verify's floor, 16 * eps
(`attnbench.verify`: 2 * the reference's own error + this floor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

VERIFY_EPS_FACTOR = 16  # verify's floor in units of eps


@dataclass(frozen=True)
class DType:
    name: str  # as suites and results rows write it: fp32 | fp16 | bf16 | fp64
    torch_name: str  # the attribute of `torch`
    bytes: int  # per element
    eps: float  # machine epsilon, torch.finfo(dtype).eps

    @property
    def tolerance(self) -> float:
        """verify's error floor for this dtype: VERIFY_EPS_FACTOR * eps."""
        return VERIFY_EPS_FACTOR * self.eps

    @property
    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.torch_name)


TABLE: dict[str, DType] = {
    d.name: d
    for d in (
        DType("fp32", "float32", 4, 2.0**-23),
        DType("fp16", "float16", 2, 2.0**-10),
        DType("bf16", "bfloat16", 2, 2.0**-7),
        DType("fp64", "float64", 8, 2.0**-52),
    )
}
DTYPES = ("fp32", "fp16", "bf16")  # the names a suite may sweep (fp64 is for references)
DTYPE_BYTES = {name: d.bytes for name, d in TABLE.items()}
EPS = {name: d.eps for name, d in TABLE.items()}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of `name` (KeyError for names not in the table)."""
    return TABLE[name].torch


def name_of(dtype: Any) -> str:
    """'fp32' for torch.float32 (any dtype in the table); str(dtype) for others."""
    text = str(dtype).removeprefix("torch.")
    for d in TABLE.values():
        if d.torch_name == text:
            return d.name
    return str(dtype)


def __getattr__(attr: str) -> Any:
    # TORCH_DTYPES (name -> torch dtype) is built on first use, so that importing this module stays torch-free
    if attr == "TORCH_DTYPES":
        value = {name: d.torch for name, d in TABLE.items()}
        globals()[attr] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
