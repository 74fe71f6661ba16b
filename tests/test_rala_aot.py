"""Ahead-of-time compilation of the RALA Triton kernels for sm_80 and sm_90 (no GPU needed).

`scripts/aot_check.py --ci` compiles a representative subset of every kernel x launch configuration
the planner picks (mechanisms/rala/aot.py) and fails on a compile error, a spill, shared memory
over the target's limit, a kernel that cannot be resident or that no configuration launches. It
must run without TRITON_INTERPRET (which tests/conftest.py sets on CPU), so it runs in a subprocess.
The full table (every level, dtype, head dim and shape): `python scripts/aot_check.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except Exception:
        return False
    return "nvidia" in backends


@pytest.mark.slow
@pytest.mark.aot
@pytest.mark.skipif(not _nvidia_backend(), reason="triton's NVIDIA backend (ptxas, cuobjdump) is not installed")
def test_aot_compile_every_planned_kernel_for_sm80_sm90():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "aot_check.py"), "--ci"],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout[-6000:])
    print(done.stderr[-3000:], file=sys.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "aot_check: ok" in done.stdout


def test_launch_recorder_sees_every_kernel():
    """The meta-tensor recorder (no compilation) sees the launches the launchers make: every kernel
    is launched by some planned case on each target; grids (B*h, splits), parallel merges (B*h, chunks + 1)."""
    code = r"""
import torch
from mechanisms.rala import aot
from mechanisms.rala.launch import merge_chunks
for arch in aot.ARCHS.values():
    names = set()
    for level, shape in (("op", (64, 1, 56, 56)), ("mixer", (1, 1, 56, 56))):
        for launch in aot.planned_launches(level, shape, 64, torch.bfloat16, arch):
            names.add(launch.name)
            if launch.name in ("_merge_kernel", "_dmerge_chunks_kernel"):  # parallel merges: (B*h, chunks + 1)
                assert launch.grid == (shape[0] * shape[1], merge_chunks(64) + 1), launch.grid
            else:
                assert launch.grid[0] == shape[0] * shape[1], launch.grid
    assert names == set(aot.all_kernel_names()), (arch.name, sorted(names))
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_backward_layout_choice():
    """Token-major (mixer) inputs: compiled fp32 backwards, fp16/bf16 backwards at N % 16 != 0 with d-block
    128, and the fp32 forward's q passes at d-block 128 run on channel-major copies (their token-major
    kernels spill); other cases keep the token-major kernels, and the interpreter keeps them for fp32 so
    CPU tests cover them. The AOT plan launches what a GPU run would."""
    import torch

    from mechanisms.rala import aot
    from mechanisms.rala.launch import backward_wants_channel_major

    assert backward_wants_channel_major(64, 32, torch.float32, compiled=True)
    assert not backward_wants_channel_major(64, 32, torch.float32, compiled=False)
    assert not backward_wants_channel_major(64, 64, torch.bfloat16, compiled=True)
    assert backward_wants_channel_major(35, 96, torch.float16, compiled=True)
    assert not backward_wants_channel_major(35, 64, torch.float16, compiled=True)
    backward = {"_dstate_kernel", "_dkv_kernel", "_dq_kernel"}
    cases = (  # dtype, d, grid, token-major pass (c), token-major backward
        (torch.float32, 64, (8, 8), True, False),
        (torch.float32, 96, (8, 8), False, False),
        (torch.bfloat16, 64, (8, 8), True, True),
        (torch.float16, 96, (5, 7), True, False),
        (torch.float16, 96, (8, 8), True, True),
    )
    for dtype, d, grid, fwd_split, bwd_split in cases:
        launches = aot.planned_launches("mixer", (1, 2, *grid), d, dtype, aot.ARCHS["sm_90"])
        forward = {bool(x.kwargs["SPLIT"]) for x in launches if x.name == "_out_kernel"}
        state = {bool(x.kwargs["SPLIT"]) for x in launches if x.name == "_state_kernel"}
        bwd = {bool(x.kwargs["SPLIT"]) for x in launches if x.name in backward}
        assert forward == {fwd_split} and state == {True} and bwd == {bwd_split}, (dtype, d, grid, forward, bwd)


def test_launch_plan_rejects_bad_value_columns():
    """LaunchPlan.vb must be a power of two dividing the d-block (else columns would go unwritten)."""
    from mechanisms.rala.launch import LaunchPlan

    assert LaunchPlan(block_n=16, pb=64, splits=1, bps=1, num_warps=8).vb == 128
    assert LaunchPlan(block_n=16, pb=64, splits=1, bps=1, num_warps=8, vb=64).vb == 64
    for bad in (256, 48):
        with pytest.raises(ValueError, match="vb"):
            LaunchPlan(block_n=16, pb=64, splits=1, bps=1, num_warps=8, vb=bad)
