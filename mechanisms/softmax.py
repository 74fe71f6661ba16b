"""Softmax attention: eager, PyTorch SDPA (free and pinned per backend), FlashAttention, xformers.

op: out = softmax(d^-0.5 q k^T) v over all N tokens, inputs/outputs (B, h, N, d), no RoPE.
mixer: the TokenMixer shell; RoPE on the raw q and k (no feature map), then the op.

FLOPs (op, forward): 4 B h N^2 d (two N x N x d matmuls, a multiply-add = 2 FLOPs);
fwd_bwd = 3.5 x fwd (FlashAttention's benchmark convention: backward 2.5x, scores recomputed).
Mixer: the op plus the shell's convs (fwd_bwd 3x for those). Bytes: q, k, v read and out written
once (the flash-style minimum; the N x N scores never reach memory). Every registration here
shares these conventions through `SoftmaxBase`, so their rows compare directly.

Backends:
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
- `softmax_flash`: the flash-attn package; FA3 (`flash_attn_interface`) on a Hopper GPU when it
  is installed, else FlashAttention-2 (`flash_attn`). `softmax_xformers`: xformers'
  memory_efficient_attention. Both take (B, N, h, d), so they declare layout "bnhd": workloads
  hand them (B, N, h, d) storage viewed as (B, h, N, d) and the transpose below is free.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.errors import MechanismUnavailable
from attnbench.layers import TokenMixer, apply_rope
from attnbench.dtypes import DTYPE_BYTES, torch_dtype
from attnbench.registry import Mechanism, Shape, register_mechanism
from mechanisms.common import SOFTMAX_CORE_FWD_BWD, level_bytes, level_flops

CITE_ATTN = "Vaswani et al., Attention Is All You Need, NeurIPS 2017"
CITE_FA2 = "Dao, FlashAttention-2, ICLR 2024"
CITE_FA3 = "Shah et al., FlashAttention-3, NeurIPS 2024"
CITE_MEM_EFFICIENT = "Rabe & Staats, Self-attention does not need O(n^2) memory, 2021; Lefaudeux et al., xFormers, 2022"
FLASH_HEAD_DIMS = tuple(range(8, 257, 8))  # FA2/FA3: head_dim <= 256, a multiple of 8


def softmax_attention_eager(q, k, v):
    """Readable reference: matmul, softmax, matmul. (B, h, N, d) -> (B, h, N, d)."""
    scale = q.shape[-1] ** -0.5
    attn = torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)  # (B, h, N, N)
    return attn @ v


class SoftmaxBase(Mechanism):
    """Shared costs and mixer; subclasses provide `attend(q, k, v)` on (B, h, N, d)."""

    def attend(self, q, k, v):
        raise NotImplementedError

    def op(self, q, k, v, *, grid):
        return self.attend(q, k, v)

    def mixer(self, dim, num_heads):
        attend = self.attend

        def operator(q, k, v, *, grid, rope):
            if rope is not None:
                sin, cos = rope
                q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
            return attend(q, k, v)

        return TokenMixer(dim, num_heads, operator)

    def flops(self, s: Shape, *, level: str, pass_: str) -> float:
        core = 4.0 * s.batch * s.heads * s.tokens**2 * s.head_dim
        return level_flops(s, level=level, pass_=pass_, core_fwd=core, core_fwd_bwd=SOFTMAX_CORE_FWD_BWD)

    def bytes(self, s: Shape, *, level: str, dtype: str) -> float:
        return level_bytes(s, level=level, dtype=dtype)

    def off_device_reason(self, device_type: str) -> str:
        """Why this registration does not run on `device_type` (a device not in `devices`)."""
        return f"runs on {'/'.join(self.devices)} only, not {device_type}"

    def _availability(self, device: str | None) -> tuple[bool, str]:
        # the registry's device test, with a reason that says why (subclasses know it)
        device_type = str(device).split(":")[0]
        if device is not None and device_type not in self.devices:
            return False, self.off_device_reason(device_type)
        return super()._availability(device)


class MaterialisedScores:
    """Mixin for implementations that materialise the (B, h, N, N) score matrix: its memory, used
    by the runner to predict (and prune) cases that cannot fit."""

    def workspace_bytes(self, s: Shape, *, level: str, dtype: str, pass_: str) -> float:
        # fwd: scores and probabilities; fwd_bwd adds the saved probabilities' gradient
        copies = 2 if pass_ == "fwd" else 3
        return float(copies * s.batch * s.heads * s.tokens**2 * DTYPE_BYTES[dtype])


@register_mechanism("softmax_eager", family="softmax", backend="torch", reference=None, cite=CITE_ATTN)
class SoftmaxEager(MaterialisedScores, SoftmaxBase):
    """Matmul-softmax-matmul in plain PyTorch; materialises the (B, h, N, N) scores."""

    def attend(self, q, k, v):
        return softmax_attention_eager(q, k, v)


@register_mechanism(
    "softmax_sdpa", family="softmax", backend="torch-sdpa", reference="softmax_eager", cite=CITE_ATTN
)
class SoftmaxSdpa(SoftmaxBase):
    """torch.nn.functional.scaled_dot_product_attention; PyTorch picks the backend."""

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(*map(last_dim_contiguous, (q, k, v)))


def last_dim_contiguous(x: Tensor) -> Tensor:
    """x itself when d is its innermost stride, else a contiguous copy.

    Every fused attention kernel needs stride(-1) == 1; SDPA given anything else silently falls back
    to its math path (and a pinned fused backend refuses). The mixer's head split hands v over as a
    strided view (B, h, N, d) with stride(-1) = N, so mixers pay for one copy here, as the
    flash-attn package's own `maybe_contiguous` would; op-level inputs pass through untouched.
    """
    return x if x.stride(-1) == 1 else x.contiguous()


# -- SDPA pinned to one backend ----------------------------------------------------------------------
# torch.backends.cuda's flags are the ones torch.nn.attention.sdpa_kernel sets (they govern CPU too).
# Setting them directly costs ~6 us per call instead of sdpa_kernel's ~22 us (torch 2.13, CPU),
# which matters at small vision shapes, where a GPU attention kernel itself takes ~10 us.
_SDPA_FLAGS = ("flash", "efficient", "math", "cudnn")
_SDPA_GET = (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.mem_efficient_sdp_enabled,
             torch.backends.cuda.math_sdp_enabled, torch.backends.cuda.cudnn_sdp_enabled)  # fmt: skip
_SDPA_SET = (torch.backends.cuda.enable_flash_sdp, torch.backends.cuda.enable_mem_efficient_sdp,
             torch.backends.cuda.enable_math_sdp, torch.backends.cuda.enable_cudnn_sdp)  # fmt: skip
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


@register_mechanism("softmax_sdpa_flash", family="softmax", backend="torch-sdpa-flash", reference="softmax_eager",
                    devices=("cuda",), dtypes=("fp16", "bf16"), cite=CITE_FA2)  # fmt: skip
class SoftmaxSdpaFlash(SoftmaxSdpaPinned):
    """SDPA pinned to its flash backend: the FlashAttention-2 kernels bundled with PyTorch (CUDA, fp16/bf16)."""

    sdpa_backend = "flash"


@register_mechanism("softmax_sdpa_efficient", family="softmax", backend="torch-sdpa-efficient",
                    reference="softmax_eager", devices=("cuda",), cite=CITE_MEM_EFFICIENT)  # fmt: skip
class SoftmaxSdpaEfficient(SoftmaxSdpaPinned):
    """SDPA pinned to its memory-efficient backend (xformers-derived CUTLASS kernels; CUDA only)."""

    sdpa_backend = "efficient"


@register_mechanism("softmax_sdpa_math", family="softmax", backend="torch-sdpa-math", reference="softmax_eager",
                    devices=("cpu", "cuda"), cite=CITE_ATTN)  # fmt: skip
class SoftmaxSdpaMath(MaterialisedScores, SoftmaxSdpaPinned):
    """SDPA pinned to its math backend: the unfused composite (matmul, softmax, matmul), any device."""

    sdpa_backend = "math"


@register_mechanism("softmax_sdpa_cudnn", family="softmax", backend="torch-sdpa-cudnn", reference="softmax_eager",
                    devices=("cuda",), dtypes=("fp16", "bf16"), cite="NVIDIA cuDNN fused attention")  # fmt: skip
class SoftmaxSdpaCudnn(SoftmaxSdpaPinned):
    """SDPA pinned to its cuDNN backend (cuDNN's fused flash-style attention; CUDA, fp16/bf16)."""

    sdpa_backend = "cudnn"


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
    "softmax_flash",
    family="softmax",
    backend="flash-attn",
    reference="softmax_eager",
    devices=("cuda",),
    dtypes=("fp16", "bf16"),
    head_dims=FLASH_HEAD_DIMS,
    cite=f"{CITE_FA2}; {CITE_FA3}",
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
            return f"only FA3 (flash_attn_interface) is installed and it needs a Hopper GPU (sm90), here " \
                   f"{_arch(device)}; pip install flash-attn for FlashAttention-2"  # fmt: skip
        return "python package 'flash_attn' is not installed (pip install flash-attn; on Hopper, FA3's " \
               "flash_attn_interface is used when installed)"  # fmt: skip


@register_mechanism(
    "softmax_xformers",
    family="softmax",
    backend="xformers",
    reference="softmax_eager",
    requires=("xformers",),
    devices=("cuda",),
    dtypes=("fp32", "fp16", "bf16"),
    head_dims=FLASH_HEAD_DIMS,
    cite=CITE_MEM_EFFICIENT,
)
class SoftmaxXformers(BnhdKernel):
    """xformers.ops.memory_efficient_attention on (B, N, h, d); xformers' dispatcher picks the kernel
    (its FlashAttention or CUTLASS operators). Head dims: multiples of 8 up to 256, which all of them cover."""

    def _choose(self, device):
        if not _installed("xformers"):
            return "python package 'xformers' is not installed (pip install xformers)"
        return _import_attr("xformers.ops", "memory_efficient_attention", "xformers")
