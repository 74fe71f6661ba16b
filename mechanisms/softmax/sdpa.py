"""Softmax attention through PyTorch's F.scaled_dot_product_attention (SDPA).

- `softmax_sdpa`: F.scaled_dot_product_attention, PyTorch picks the kernel. SDPA inputs are made
  last-dim contiguous first (`last_dim_contiguous`): given the mixer's strided v, SDPA would
  otherwise fall back to its unfused math path without a word.
- `softmax_sdpa_{flash,efficient,math,cudnn}`: SDPA pinned to one backend. On CUDA the flash
  backend is the FlashAttention-2 code bundled with PyTorch (or FA3/FA4 if a user activated one with
  torch.nn.attention.activate_flash_attention_impl; the backend column then says so). On CPU,
  pinning FLASH_ATTENTION selects PyTorch's own CPU kernel (`_scaled_dot_product_flash_attention_for_cpu`,
  the one `softmax_sdpa` already uses there), which is not FlashAttention-2, and PyTorch has no CPU
  efficient or cuDNN kernel; so flash/efficient/cudnn are registered for CUDA only and math for both.
  On CUDA, availability comes from a tiny probe call per dtype; a shape a backend cannot run raises
  MechanismUnavailable with PyTorch's own explanation (its warnings), which the runner records as
  a skipped row.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.dtypes import torch_dtype
from attnbench.errors import MechanismUnavailable
from attnbench.registry import register_mechanism
from mechanisms.softmax.base import (
    CITE_ATTN,
    CITE_FA2,
    CITE_MEM_EFFICIENT,
    MaterialisedScores,
    SoftmaxBase,
    last_dim_contiguous,
)


@register_mechanism("softmax_sdpa", family="softmax", backend="torch-sdpa", reference="softmax_eager", cite=CITE_ATTN)
class SoftmaxSdpa(SoftmaxBase):
    """torch.nn.functional.scaled_dot_product_attention; PyTorch picks the backend."""

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(*map(last_dim_contiguous, (q, k, v)))


# -- SDPA pinned to one backend ----------------------------------------------------------------------
# torch.backends.cuda's flags are the ones torch.nn.attention.sdpa_kernel sets (they govern CPU too).
# Setting them directly costs ~6 us per call instead of sdpa_kernel's ~22 us (torch 2.13, CPU),
# which matters at small vision shapes, where a GPU attention kernel itself takes ~10 us.
_SDPA_FLAGS = ("flash", "efficient", "math", "cudnn")
_SDPA_GET = (
    torch.backends.cuda.flash_sdp_enabled,
    torch.backends.cuda.mem_efficient_sdp_enabled,
    torch.backends.cuda.math_sdp_enabled,
    torch.backends.cuda.cudnn_sdp_enabled,
)
_SDPA_SET = (
    torch.backends.cuda.enable_flash_sdp,
    torch.backends.cuda.enable_mem_efficient_sdp,
    torch.backends.cuda.enable_math_sdp,
    torch.backends.cuda.enable_cudnn_sdp,
)
_NO_KERNEL = ("No available kernel", "No viable backend")  # what SDPA raises when the pinned backend can't run
_OFF_DEVICE = {
    "flash": "the flash backend runs FlashAttention-2 on CUDA only; pinning it on CPU selects PyTorch's "
    "own CPU flash kernel (_scaled_dot_product_flash_attention_for_cpu), which softmax_sdpa already measures",
    "efficient": "PyTorch has no CPU kernel for the memory-efficient backend",
    "cudnn": "cuDNN attention is a CUDA library",
}


def sdpa_pinned(backend: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """F.scaled_dot_product_attention with only `backend` enabled; the previous flags are restored."""
    previous = tuple(get() for get in _SDPA_GET)
    try:
        for name, set_flag in zip(_SDPA_FLAGS, _SDPA_SET):
            set_flag(name == backend)
        return F.scaled_dot_product_attention(*map(last_dim_contiguous, (q, k, v)))
    finally:
        for set_flag, on in zip(_SDPA_SET, previous):
            set_flag(on)


def _no_kernel(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _NO_KERNEL)


def sdpa_refusal(backend: str, q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """None if the pinned backend runs on these inputs, else PyTorch's reasons (its warnings, deduplicated)."""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            sdpa_pinned(backend, q, k, v)
            return None
        except RuntimeError as exc:
            if not _no_kernel(exc):
                return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            first_line = str(exc).splitlines()[0]
    reasons = list(dict.fromkeys(str(w.message).strip() for w in caught))
    return "; ".join(reasons) if reasons else first_line


class SoftmaxSdpaPinned(SoftmaxBase):
    """SDPA with one backend enabled (`sdpa_backend`, one of _SDPA_FLAGS). Inputs stay (B, h, N, d)."""

    sdpa_backend = ""

    def attend(self, q, k, v):
        try:
            return sdpa_pinned(self.sdpa_backend, q, k, v)
        except RuntimeError as exc:
            if not _no_kernel(exc):
                raise
            reason = sdpa_refusal(self.sdpa_backend, q.detach(), k.detach(), v.detach()) or str(exc)
        shape = "x".join(map(str, q.shape))
        raise MechanismUnavailable(
            f"{self.name} is unavailable for {shape} {str(q.dtype).removeprefix('torch.')} on {q.device.type}: "
            f"PyTorch refused the SDPA {self.sdpa_backend} backend: {reason}"
        )

    def check(self, device: str | None) -> str | None:
        if device is None:
            return None
        dev = torch.device(device)
        if dev.type not in self.devices:
            return self.off_device_reason(dev.type)
        refusals = {dtype: self._probe(dev, dtype) for dtype in self.dtypes}
        if self.sdpa_backend == "flash" and dev.type == "cuda":
            self.backend = f"torch-sdpa-flash-{_sdpa_flash_impl()}"
        if all(refusals.values()):  # usable when at least one declared dtype runs; op explains the others
            return "; ".join(f"{dtype}: {why}" for dtype, why in refusals.items())
        return None

    def _probe(self, dev: torch.device, dtype: str) -> str | None:
        """One tiny pinned call (B=1, h=2, N=64, d=64) per (device, dtype); the refusal or None. Cached."""
        cache = self.__dict__.setdefault("_probe_cache", {})
        key = (str(dev), dtype)
        if key not in cache:
            tdtype = torch_dtype(dtype)
            q = torch.randn(1, 2, 64, 64, device=dev, dtype=tdtype)  # (B, h, N, d)
            cache[key] = sdpa_refusal(self.sdpa_backend, q, q, q)
        return cache[key]

    def off_device_reason(self, device_type: str) -> str:
        why = _OFF_DEVICE.get(self.sdpa_backend)
        return f"SDPA {self.sdpa_backend} backend needs CUDA (this is {device_type})" + (f": {why}" if why else "")


def _sdpa_flash_impl() -> str:
    """Which code the CUDA flash backend runs: 'fa2' (bundled with torch) or an activated 'fa3'/'fa4'."""
    current = getattr(torch.nn.attention, "current_flash_attention_impl", None)
    impl = current() if current is not None else None
    return str(impl).lower() if impl else "fa2"


@register_mechanism(
    "softmax_sdpa_flash",
    family="softmax",
    backend="torch-sdpa-flash",
    reference="softmax_eager",
    devices=("cuda",),
    dtypes=("fp16", "bf16"),
    cite=CITE_FA2,
)
class SoftmaxSdpaFlash(SoftmaxSdpaPinned):
    """SDPA pinned to its flash backend: the FlashAttention-2 kernels bundled with PyTorch (CUDA, fp16/bf16)."""

    sdpa_backend = "flash"


@register_mechanism(
    "softmax_sdpa_efficient",
    family="softmax",
    backend="torch-sdpa-efficient",
    reference="softmax_eager",
    devices=("cuda",),
    cite=CITE_MEM_EFFICIENT,
)
class SoftmaxSdpaEfficient(SoftmaxSdpaPinned):
    """SDPA pinned to its memory-efficient backend (xformers-derived CUTLASS kernels; CUDA only)."""

    sdpa_backend = "efficient"


@register_mechanism(
    "softmax_sdpa_math",
    family="softmax",
    backend="torch-sdpa-math",
    reference="softmax_eager",
    devices=("cpu", "cuda"),
    cite=CITE_ATTN,
)
class SoftmaxSdpaMath(MaterialisedScores, SoftmaxSdpaPinned):
    """SDPA pinned to its math backend: the unfused composite (matmul, softmax, matmul), any device."""

    sdpa_backend = "math"


@register_mechanism(
    "softmax_sdpa_cudnn",
    family="softmax",
    backend="torch-sdpa-cudnn",
    reference="softmax_eager",
    devices=("cuda",),
    dtypes=("fp16", "bf16"),
    cite="NVIDIA cuDNN fused attention",
)
class SoftmaxSdpaCudnn(SoftmaxSdpaPinned):
    """SDPA pinned to its cuDNN backend (cuDNN's fused flash-style attention; CUDA, fp16/bf16)."""

    sdpa_backend = "cudnn"
