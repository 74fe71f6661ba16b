"""The host-side launch plan of the RALA Triton kernels, shared by the forward and backward launchers and
by the ahead-of-time check: block sizes by head dim and dtype (per GPU architecture), splits along N by
SM count and split-state traffic, output layout, RoPE arguments, workspace sizes. Imports no triton.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LaunchPlan:
    """Block sizes and grid of one call. Programs per pass: (B*h, splits)."""

    block_n: int  # tokens per block
    pb: int  # padded d/2 (power of two >= 16); the d-block is 2*pb
    splits: int  # programs per (b, h) along N
    bps: int  # token blocks per split
    num_warps: int
    warps_b1: int = 0  # warps of the backward's first pass (_dstate_kernel) where it differs; 0: num_warps
    vb: int = 0  # dKV/KV value columns: per program of the forward's pass (b), per step of the backward's
    # _dkv token loop; 0: the whole d-block (2*pb)

    def __post_init__(self):
        if not self.vb:
            object.__setattr__(self, "vb", 2 * self.pb)
        if self.vb & (self.vb - 1) or (2 * self.pb) % self.vb:
            raise ValueError(f"vb must be a power of two dividing the d-block {2 * self.pb}, got {self.vb}")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def compiling_kernels(compiled: bool | None) -> bool:
    """The layout choices below plan for compiled kernels (True) or the interpreter (False); None: as this
    process runs them."""
    return not interpreting() if compiled is None else compiled


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda" and not interpreting():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: several splits even at tiny shapes, so the merge paths are exercised


@functools.cache
def _device_arch(device: torch.device) -> int:
    """Compute capability as an int (90 for sm_90); 90 where there is no CUDA device (interpreter)."""
    if device.type == "cuda" and not interpreting():
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return 90


# Launch tables: (arch, pass, 16-bit?, d-block, token-major inputs) -> (BLOCK_N, num_warps), chosen by
# compiling every kernel for the target and reading its registers and local memory
# (scripts/aot_check.py, which fails CI on any spill): the largest token block that keeps every
# kernel of the pass spill-free, preferring more programs per SM, with triton 3.9 (CI's) and 3.6 (the GPU
# image's) both: sm_90 bwd 128 "ch" (16) and sm_80 fwd 64 "tok" (32) are one step smaller than 3.9 alone
# allows, because 3.6 spills 8-16 B at the larger ones (results/aot-sm90-sm80-triton36-20261203.txt, its
# header). "tok" = token-contiguous inputs (the mixer's head split, RoPE tables from memory); "ch" =
# channel-contiguous (op level).
# Architectures other than sm_80 / sm_90 use the sm_90 entries.
LAUNCH_TABLE = {
    # sm_90 (H100/H200)
    (90, "fwd", True, 64, "ch"): (64, 4),
    (90, "fwd", True, 64, "tok"): (64, 4),
    (90, "fwd", True, 128, "ch"): (32, 8),
    (90, "fwd", True, 128, "tok"): (32, 8),
    (90, "bwd", True, 64, "ch"): (64, 8),
    (90, "bwd", True, 64, "tok"): (16, 4),
    (90, "bwd", True, 128, "ch"): (16, 8),
    (90, "bwd", True, 128, "tok"): (16, 8),
    # sm_80 (A100)
    (80, "fwd", True, 64, "ch"): (64, 4),
    (80, "fwd", True, 64, "tok"): (32, 4),
    (80, "fwd", True, 128, "ch"): (32, 8),
    (80, "fwd", True, 128, "tok"): (32, 8),
    (80, "bwd", True, 64, "ch"): (16, 4),
    (80, "bwd", True, 64, "tok"): (16, 4),
    (80, "bwd", True, 128, "ch"): (32, 8),
    (80, "bwd", True, 128, "tok"): (16, 8),
}
# Token-major inputs whose N is not a multiple of 16: no 16-byte accesses are possible (the token
# stride has no known alignment), every access is scalar and needs more registers: smaller blocks.
UNALIGNED_TOK = {
    ("fwd", 64): (16, 4),
    ("bwd", 64): (16, 8),
    ("fwd", 128): (16, 8),
    ("bwd", 128): (16, 8),
}  # bwd 128: only for a caller's own plan (rala_backward copies, see below)


def backward_wants_channel_major(n: int, d: int, dtype: torch.dtype, *, compiled: bool | None = None) -> bool:
    """Whether `rala_backward` first copies token-contiguous q, k, v and g to channel-contiguous memory
    (4 N d elements each way) and runs the channel-major kernels, because every token-major choice spills:

    - fp16/bf16 with N not a multiple of 16 at d-block 128 (d 65..128): the scalar-access kernels
      (_dkv, _dq) spill on sm_90 at any block/warp choice (aot_check: 32-40 B at 8 warps, 144-164 B at
      16). RAVLT's d = 96 stages have 56² and 28² grids (N a multiple of 16): only unusual grids pay.
    - fp32 at any d: the token-major fp32 backward spills at d-block 32-64 too (aot_check of that plan,
      triton 3.9: _dkv 268-460 B, _dstate 16-104 B, _dq 4-96 B; 16 warps: still 268 B in _dkv), the
      channel-major one does not (at d-block 128: with FP32_VALUE_COLUMNS). fp32 runs exact
      FMA dots (no tensor cores), so the backward is compute-bound and the copies' traffic matters less than the spills'
      latency in its inner loop (an estimate, not a GPU measurement). Only where kernels are compiled
      (`compiled`, default: not the interpreter): the interpreter has no registers, and its fp32 runs are
      how CPU tests cover the token-major backward kernels that fp16/bf16 use on GPUs."""
    if dtype == torch.float32 and compiling_kernels(compiled):
        return True
    return n % 16 != 0 and _next_pow2(d) >= 128


# fp32 at d-block 128: a register-resident d x d fp32 state with fp32 operand tiles exceeds 255 registers
# at any block/warp choice. Forward, pass (b) (aot_check, sm_90: 64 B spilled channel-major, 60 B
# token-major): KV's value columns split over 2 programs of 64 (grid (B*h, S, 2)), 0 B (token-major with
# unaligned N: 16 warps, FP32_UNALIGNED_TOK). Both compute the k side (phi, scores, rotation) and read k
# (the second read from L2: the two programs run side by side). Backward, _dkv (488-576 B on sm_90 and
# sm_80): dKV is read 64 value columns at a time in every token block from the workspace (L1/L2, 32 KB
# per step) instead of held in registers: 150-182 registers, 0 B, 37 KB of shared memory (139 KB with dKV
# in registers). Its columns cannot go to separate programs: dk sums over them.
FP32_VALUE_COLUMNS = {128: 64}


def out_pass_wants_channel_major(d: int, dtype: torch.dtype, *, compiled: bool | None = None) -> bool:
    """fp32 with token-contiguous inputs at d-block 128: the forward's pass (c) spills (aot_check: 172-296 B
    on sm_90 and sm_80, from its q and RoPE tiles), the channel-major one does not (0 B, RoPE tables from
    memory too), so `rala_forward` copies q to channel-major memory (N d elements each way) for passes (a)
    and (c), and out comes back contiguous. Only where kernels are compiled (`compiled`, default: not the
    interpreter), like `backward_wants_channel_major`."""
    return compiling_kernels(compiled) and dtype == torch.float32 and _next_pow2(d) >= 128


# fp32 inputs: exact FMA dots (no tensor cores), the smallest token block; (BLOCK_N, warps, warps of B1)
FP32_DEFAULT = (16, 8)
FP32_TABLE = {(90, "bwd", 64, "ch"): (16, 8, 4)}  # sm_90: B1 at 8 warps gets 128 registers and spills 4 B
# fp32, token-major inputs whose N is not a multiple of 16 (scalar accesses), sm_90, forward at d-block 128,
# by compiler: with triton 3.9 pass (b) at 8 warps needs 255 registers and spills 8 B, at 16 warps 128 and
# none; with triton 3.6 (the GPU image's) and 3.8 it is the other way round (8 warps: 0 B; 16: pass (b) 8 B
# on 3.6, pass (c) 4 B on both). So 16 warps from triton 3.9 on (the newest measured), the default 8 below it.
# Aligned N keeps 8 warps (at 16 its tiles lose their 16-byte accesses); sm_80 fits at 8 (255 registers, 0 B).
FP32_UNALIGNED_TOK = {(90, "fwd", 128): ((3, 9), (16, 16))}  # key: ((min triton major, minor), entry)


@functools.cache
def triton_version() -> tuple[int, int]:
    """(major, minor) of the installed triton, read from its package metadata (this module imports no triton);
    (0, 0) when it is not installed."""
    from importlib import metadata

    try:
        major, minor = metadata.version("triton").split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except (metadata.PackageNotFoundError, ValueError):
        return 0, 0


def launch_entry(
    arch: int, backward: bool, dtype: torch.dtype, db: int, token_major: bool, aligned: bool = True
) -> tuple:
    """(BLOCK_N, num_warps[, warps of B1]) from the launch tables (d-blocks 32 use the 64 entries)."""
    arch, pass_, db, layout = 80 if arch < 90 else 90, "bwd" if backward else "fwd", max(64, db), "ch"
    if token_major:
        layout = "tok"
    if dtype == torch.float32:
        min_triton, unaligned = FP32_UNALIGNED_TOK.get((arch, pass_, db), (None, None))
        if token_major and not aligned and unaligned and triton_version() >= min_triton:
            return unaligned
        return FP32_TABLE.get((arch, pass_, db, layout), FP32_DEFAULT)
    if token_major and not aligned:
        return UNALIGNED_TOK[(pass_, db)]
    return LAUNCH_TABLE[(arch, pass_, True, db, layout)]


@functools.cache
def plan_launch(
    bh: int,
    n: int,
    d: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    backward: bool = False,
    token_major: bool = False,
    arch: int | None = None,
    sms: int | None = None,
    block_n: int | None = None,
    splits: int | None = None,
    num_warps: int | None = None,
) -> LaunchPlan:
    """Autotune-free plan from the per-architecture launch table (`LAUNCH_TABLE`), which keeps every
    kernel free of register spills on sm_80 and sm_90 (checked in CI by scripts/aot_check.py; the full
    grid, fp32 included, with triton 3.9 and 3.6: results/aot-sm90-sm80-triton39-20261203.txt and
    results/aot-sm90-sm80-triton36-20261203.txt).
    arch (e.g. 90) and sms default to the device's; token_major: the inputs are token-contiguous
    (the mixer's layout).

    splits S along N (one wave, never a partial second one): at least SMs // (B*h), so every SM gets a
    program; more, up to 2 SMs // (B*h) (two programs per SM, better latency hiding), only while the split
    states stay within STATE_TRAFFIC_BUDGET (5 %) of the pass's minimum HBM bytes (`state_traffic_fraction`).
    Each split costs one fp32 d x d state written to HBM: at B=2, h=16, N=1024, d=64, bf16 (sm_90, 132 SMs)
    that is 2.5 % of the forward's minimum per split, so 2 programs per SM (S = 8) would add 23 %; S = 4 (128
    programs for 132 SMs) adds 12.7 %. 5 % is out of reach there: even S = 1 adds 5.1 % (its state and the
    merged copy) and leaves 100 of 132 SMs idle, which costs far more than the state traffic, so the fill
    floor wins. At the benchmark's B=64, h=1, N=3136 the rule keeps S = 4 (4.1 %). An estimate
    (scripts/rala_roofline.py); scripts/rala_splits.py times the split counts on a GPU.
    """
    db = max(32, _next_pow2(d))
    entry = launch_entry(arch or _device_arch(device), backward, dtype, db, token_major, aligned=n % 16 == 0)
    default_block, default_warps = entry[:2]
    warps_b1 = entry[2] if len(entry) > 2 and num_warps is None else 0
    if interpreting():  # tiny shapes on CPU: several blocks per split and several splits get tested
        default_block = 16
    block_n = block_n or max(16, min(default_block, _next_pow2(n)))
    num_warps = num_warps or default_warps
    n_blocks = _cdiv(n, block_n)
    if splits is None:
        n_sm = sms or _sm_count(device)
        splits = max(1, n_sm // bh)  # every SM busy (floor: no straggling partial second wave)
        while (
            splits < 2 * n_sm // bh
            and splits < n_blocks
            and state_traffic_fraction(n, d, dtype.itemsize, splits + 1, backward) <= STATE_TRAFFIC_BUDGET
        ):
            splits += 1  # a second program per SM where the split states stay cheap
    splits = max(1, min(splits, n_blocks))
    bps = _cdiv(n_blocks, splits)
    splits = _cdiv(n_blocks, bps)  # no empty split
    vb = FP32_VALUE_COLUMNS.get(db, db) if dtype == torch.float32 else db
    return LaunchPlan(
        block_n=block_n, pb=db // 2, splits=splits, bps=bps, num_warps=num_warps, warps_b1=warps_b1, vb=vb
    )


def empty_like_layout(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised (B, h, N, d) tensor laid out like `x` where that layout is a common one:
    (B, N, h, d) memory, token-contiguous (B, h, d, N) memory (the mixer's head split), else
    contiguous."""
    b, h, n, d = x.shape
    dtype = dtype or x.dtype
    st = x.stride()
    if st[3] == 1 and st[1] == d and st[2] == h * d and h > 1:
        return torch.empty(b, n, h, d, dtype=dtype, device=x.device).transpose(1, 2)
    if st[2] == 1 and n > 1:
        return torch.empty(b, h, d, n, dtype=dtype, device=x.device).transpose(2, 3)
    return torch.empty(b, h, n, d, dtype=dtype, device=x.device)


@functools.cache
def rope_angle_on(d: int, device: torch.device) -> torch.Tensor:
    """The spec's (d/2,) fp32 angle buffer on `device` (cached)."""
    from attnbench.layers import rope_angle

    return rope_angle(d).to(device)


def rope_args(rope, n: int, d: int, device: torch.device, token_major: bool = False):
    """(ANGLE, SIN, COS, stride_n, stride_d, ROPE_FROM_MEM) for the kernels.

    token_major (the inputs are token-contiguous, as the mixer's head split makes them): the tables
    are handed over token-contiguous too ((d, N) memory, one small copy of 2 N d elements shared by
    every (b, h)), so every tile of a kernel has one memory order; a table tile in the other order
    would need a layout conversion through shared memory and its registers (spills at d >= 64)."""
    angle = rope_angle_on(d, device)
    if rope is None:
        return angle, angle, angle, 0, 0, False
    sin, cos = rope
    if sin.shape != (n, d) or cos.shape != (n, d) or sin.stride() != cos.stride():
        raise ValueError(
            f"rope tables must be two (N, d) = ({n}, {d}) tensors with equal strides, "
            f"got {tuple(sin.shape)} and {tuple(cos.shape)}"
        )
    if token_major and n > 1 and sin.stride(0) != 1:
        sin, cos = sin.t().contiguous().t(), cos.t().contiguous().t()  # (N, d) views of (d, N) memory
    return angle, sin, cos, sin.stride(0), sin.stride(1), True


def workspace_size(bh: int, splits: int, d: int) -> int:
    """fp32 elements of the forward's workspace (`state_ptrs`, `partial_ptrs`): one allocation
    instead of nine keeps the host-side cost of a call low (it matters at ~50 us kernels)."""
    return bh * (2 * d + d * d + 2) + bh * splits * (2 * d + d * d + 2)


def dworkspace_size(bh: int, splits: int, d: int) -> int:
    """fp32 elements of the backward's workspace (triton_bwd.dws_ptrs): dKV, dksum, T per (b, h), per split
    dKV_s, dksum_s, dqbar_s, then the parallel merge's T shares (merge_chunks(d) + 1 per (b, h))."""
    return bh * (d * d + d + 1) + bh * splits * (d * d + 2 * d) + bh * (merge_chunks(d) + 1)


STATE_TRAFFIC_BUDGET = 0.05  # split states may add at most this fraction to a pass's minimum HBM bytes


def state_traffic_fraction(n: int, d: int, itemsize: int, splits: int, backward: bool = False) -> float:
    """HBM bytes of the split states as a fraction of the pass's minimum traffic.

    Each of the `splits` programs of a (b, h) writes one fp32 state (d*d + d + 2 words: KV or dKV,
    ksum or dksum, m, l) and the merge writes one more (the merged state the backward reads); the
    merge and pass (c) read them back from L2 (written just before, a few MB), so only the writes
    reach HBM. Minimum: 5 N d elements forward (q twice, k, v, out), 9 N d backward (q, g twice,
    k, v, dq, dk, dv). Also used by roofline.py."""
    minimum = (9 if backward else 5) * n * d * itemsize
    return (splits + 1) * 4 * (d * d + d + 2) / minimum


FUSE_MERGE_MAX_SPLITS = 4  # up to this many splits, the forward's pass (c) merges the split states itself
MERGE_CHUNK = 256  # floats of a split's d x d state one merge program sums (CW); ksum (d <= CW) takes one more
MERGE_SPLITS_BLOCK = 16  # split records a merge program loads at once (SB): (16, 256) fp32, 32 per thread
MERGE_WARPS = 4


def merge_chunks(d: int) -> int:
    """MERGE_CHUNK-float chunks of a d x d state: a parallel merge runs merge_chunks(d) + 1 programs per (b, h)."""
    return _cdiv(d * d, MERGE_CHUNK)
