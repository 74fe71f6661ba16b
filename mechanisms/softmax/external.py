"""Softmax attention from optional packages: FlashAttention (flash-attn) and xformers, on (B, N, h, d).

- `softmax_flash`: the flash-attn package; FA3 (`flash_attn_interface`) on a Hopper GPU when it
  is installed, else FlashAttention-2 (`flash_attn`). `softmax_xformers`: xformers'
  memory_efficient_attention. Both take (B, N, h, d), so they declare layout "bnhd": workloads
  hand them (B, N, h, d) storage viewed as (B, h, N, d) and the transpose below is free.
Each is resolved once per device; a package that is missing or fails to import is a reason, not a crash.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from attnbench.errors import MechanismUnavailable
from attnbench.registry import register_mechanism
from mechanisms.softmax.base import CITE_FA2, CITE_FA3, CITE_MEM_EFFICIENT, SoftmaxBase, last_dim_contiguous

FLASH_HEAD_DIMS = tuple(range(8, 257, 8))  # FA2/FA3: head_dim <= 256, a multiple of 8
# what both registrations here declare: softmax checked against softmax_eager, CUDA only, FlashAttention's head dims
CUDA_KERNEL = dict(family="softmax", reference="softmax_eager", devices=("cuda",), head_dims=FLASH_HEAD_DIMS)


# -- external packages: (B, N, h, d) kernels -------------------------------------------------------------
def to_bnhd(x: Tensor) -> Tensor:
    """(B, h, N, d) -> (B, N, h, d) view; copied only when d is not the innermost stride (kernels need that)."""
    return last_dim_contiguous(x.transpose(1, 2))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _device_key(device: str | torch.device | None) -> str:
    if device is None:
        return "none"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def cuda_capability(device: str | torch.device | None) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None for other devices or without CUDA."""
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(torch.device(device))


def _arch(device: str | torch.device | None) -> str:
    cap = cuda_capability(device)
    return f"sm{cap[0]}{cap[1]}" if cap is not None else f"{_device_key(device)} (no CUDA GPU)"


def is_hopper(device: str | torch.device | None) -> bool:
    """True on sm90 (H100/H200), the only architecture the FA3 (flash_attn_interface) build targets."""
    return cuda_capability(device) == (9, 0)


@dataclass(frozen=True)
class KernelImpl:
    backend: str  # what the backend column records
    fn: Callable[..., object]  # (B, N, h, d) x3 -> (B, N, h, d), or a tuple whose first item is that


def _import_attr(module: str, attr: str, backend: str) -> KernelImpl | str:
    try:
        return KernelImpl(backend, getattr(importlib.import_module(module), attr))
    except Exception as exc:  # a broken build (ABI mismatch, missing CUDA libs) is a reason, not a crash
        return f"{module} is installed but failed to import: {type(exc).__name__}: {str(exc).splitlines()[0]}"


class BnhdKernel(SoftmaxBase):
    """A (B, N, h, d) kernel from an optional package, resolved once per device (`_resolve`)."""

    layout = "bnhd"

    def _choose(self, device: str | torch.device | None) -> KernelImpl | str:
        raise NotImplementedError

    def _resolve(self, device: str | torch.device | None) -> KernelImpl | str:
        cache = self.__dict__.setdefault("_impl_cache", {})
        key = _device_key(device)
        if key not in cache:
            cache[key] = self._choose(device)
        return cache[key]

    def off_device_reason(self, device_type: str) -> str:
        reason = f"{self.backend} kernels need CUDA (this is {device_type})"
        missing = self._resolve(None)  # the package state, device-independent
        return f"{reason}; {missing}" if isinstance(missing, str) else reason

    def check(self, device: str | None) -> str | None:
        impl = self._resolve(device)
        if isinstance(impl, str):
            return impl
        if device is not None and torch.device(device).type == "cuda":
            self.backend = impl.backend  # record which implementation this device runs
        return None

    def attend(self, q, k, v):
        impl = self._resolve(q.device)
        if isinstance(impl, str):
            raise MechanismUnavailable(f"{self.name} is unavailable: {impl}")
        out = impl.fn(to_bnhd(q), to_bnhd(k), to_bnhd(v))  # (B, N, h, d) in and out
        if isinstance(out, tuple):  # FA3 releases that return (out, softmax_lse)
            out = out[0]
        return out.transpose(1, 2)  # (B, h, N, d) view


@register_mechanism(
    "softmax_flash", backend="flash-attn", dtypes=("fp16", "bf16"), cite=f"{CITE_FA2}; {CITE_FA3}", **CUDA_KERNEL
)
class SoftmaxFlash(BnhdKernel):
    """The flash-attn package on (B, N, h, d): FA3's flash_attn_interface.flash_attn_func on a Hopper GPU
    when installed (backend 'flash-attn-3'), else FlashAttention-2's flash_attn.flash_attn_func ('flash-attn')."""

    def _choose(self, device):
        fa2, fa3 = _installed("flash_attn"), _installed("flash_attn_interface")
        if fa3 and (device is None or is_hopper(device)):  # device None: the package state only
            return _import_attr("flash_attn_interface", "flash_attn_func", "flash-attn-3")
        if fa2:
            cap = cuda_capability(device)
            if cap is not None and cap < (8, 0):
                return f"flash-attn 2 needs an Ampere or newer GPU (sm80+), here {_arch(device)}"
            return _import_attr("flash_attn", "flash_attn_func", "flash-attn")
        if fa3:
            return (
                f"only FA3 (flash_attn_interface) is installed and it needs a Hopper GPU (sm90), here "
                f"{_arch(device)}; pip install flash-attn for FlashAttention-2"
            )
        return (
            "python package 'flash_attn' is not installed (pip install flash-attn; on Hopper, FA3's "
            "flash_attn_interface is used when installed)"
        )


@register_mechanism(
    "softmax_xformers",
    backend="xformers",
    requires=("xformers",),
    dtypes=("fp32", "fp16", "bf16"),
    cite=CITE_MEM_EFFICIENT,
    **CUDA_KERNEL,
)
class SoftmaxXformers(BnhdKernel):
    """xformers.ops.memory_efficient_attention on (B, N, h, d); xformers' dispatcher picks the kernel
    (its FlashAttention or CUTLASS operators). Head dims: multiples of 8 up to 256, which all of them cover."""

    def _choose(self, device):
        if not _installed("xformers"):
            return "python package 'xformers' is not installed (pip install xformers)"
        return _import_attr("xformers.ops", "memory_efficient_attention", "xformers")
