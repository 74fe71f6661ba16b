"""Ahead-of-time compilation of every RALA Triton kernel for sm_80 and sm_90, on a machine without a GPU.

What can be known before a GPU runs the kernels: that each kernel x launch configuration the
planner (`plan_launch`) can choose compiles for the target, and its registers, local memory
(spills), shared memory, occupancy and the width of its global accesses.

How: `rala_forward` / `rala_backward` run on meta tensors with every kernel replaced by a recorder,
so the launches (grid, arguments, num_warps, constexprs) are exactly the ones the launchers make
for the target's SM count and launch table. Each recorded launch is specialised the way Triton's
JIT specialises a real call (the JIT's own binder: ints equal to 1 become constants, pointers and
ints divisible by 16 carry `tt.divisibility`), then compiled with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32))`; registers and local memory come from the bundled `cuobjdump
--dump-resource-usage`, shared memory from the compiled metadata, and the count of scalar
global loads/stores from the PTX.

Must run in a process where TRITON_INTERPRET is unset (the kernels must be JITFunctions);
`scripts/aot_check.py` is the command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

import torch

LEVELS = ("op", "mixer")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEAD_DIMS = (32, 64, 96, 128)


@dataclass(frozen=True)
class Arch:
    """A compilation target and the limits its occupancy is computed with."""

    name: str
    cc: int  # compute capability, e.g. 90
    sms: int  # SM count of the GPU the launch plan is made for
    gpu: str
    smem_block: int  # max dynamic shared memory per block (bytes, opt-in)
    smem_sm: int  # shared memory per SM (bytes)
    regs_sm: int = 65536
    warps_sm: int = 64
    blocks_sm: int = 32


ARCHS = {
    "sm_90": Arch("sm_90", 90, 132, "H100/H200 SXM", smem_block=232448, smem_sm=233472),
    "sm_80": Arch("sm_80", 80, 108, "A100", smem_block=166912, smem_sm=167936),
}

# (batch, heads, H, W): shapes whose launch plans cover the planner's branches: the benchmark's
# B*h (64 x 1, 8 x 4), a single image (S large: separate merge kernel), a mid-size grid, a grid
# whose N is not a multiple of 16 (no alignment on the token stride), a tiny grid (small BLOCK_N).
OP_SHAPES = ((64, 1, 56, 56), (8, 4, 56, 56), (1, 1, 56, 56), (2, 2, 14, 14), (2, 1, 7, 7))
# mixer: RAVLT stage shapes (heads = C / d at stages 1-2), batch 64 and 1, plus the small ones
MIXER_SHAPES = ((64, 1, 56, 56), (1, 1, 56, 56), (8, 2, 28, 28), (2, 2, 14, 14), (2, 1, 7, 7))


@dataclass
class Launch:
    kernel: object  # the JITFunction
    grid: tuple
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.__name__


@contextlib.contextmanager
def recording(log: list):
    """Replace every kernel of triton_kernels / triton_bwd by a recorder that appends `Launch`es."""
    from mechanisms.rala import triton_bwd, triton_kernels

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: log.append(Launch(self.kernel, tuple(grid), args, kwargs))

    saved = []
    for mod in (triton_kernels, triton_bwd):
        for name, obj in list(vars(mod).items()):
            if name.startswith("_") and name.endswith("_kernel"):
                saved.append((mod, name, obj))
                setattr(mod, name, Recorder(obj))
    try:
        yield log
    finally:
        for mod, name, obj in saved:
            setattr(mod, name, obj)


def meta_inputs(level: str, shape: tuple, d: int, dtype: torch.dtype):
    """q, k, v (B, h, N, d) and rope tables as the op level (contiguous, in-kernel RoPE) or the
    mixer (token-contiguous views of qkvo's output, tables from the mixer's Rope2d) pass them."""
    from attnbench.layers import split_heads

    b, h, hh, ww = shape
    n = hh * ww
    if level == "op":
        q, k, v = (torch.empty(b, h, n, d, dtype=dtype, device="meta") for _ in range(3))
        return q, k, v, None
    c = h * d
    t = torch.empty(b, 4 * c, hh, ww, dtype=dtype, device="meta")  # qkvo's output
    q, k, v = split_heads(t[:, : 3 * c], 3, h)
    rope = (torch.empty(n, d, dtype=dtype, device="meta"), torch.empty(n, d, dtype=dtype, device="meta"))
    return q, k, v, rope


def planned_launches(
    level: str,
    shape: tuple,
    d: int,
    dtype: torch.dtype,
    arch: Arch,
    *,
    fwd: dict | None = None,
    bwd: dict | None = None,
) -> list[Launch]:
    """The kernel launches rala_forward + rala_backward make for this case on `arch` (fwd / bwd:
    plan_launch overrides such as block_n, num_warps, to try a table entry)."""
    from mechanisms.rala.launch import backward_wants_channel_major, plan_launch
    from mechanisms.rala.triton_bwd import rala_backward
    from mechanisms.rala.triton_kernels import rala_forward, token_major

    q, k, v, rope = meta_inputs(level, shape, d, dtype)
    b, h, n, _ = q.shape
    grid = shape[2:]
    dev = torch.device("meta")
    log: list[Launch] = []
    with recording(log):
        fplan = plan_launch(
            b * h, n, d, dtype, dev, arch=arch.cc, sms=arch.sms, token_major=token_major(q), **(fwd or {})
        )
        out, ws = rala_forward(q, k, v, grid, rope, plan=fplan, compiled=True)
        bwd_tok = token_major(q) and not backward_wants_channel_major(n, d, dtype, compiled=True)  # as on a GPU
        bplan = plan_launch(
            b * h, n, d, dtype, dev, backward=True, arch=arch.cc, sms=arch.sms, token_major=bwd_tok, **(bwd or {})
        )
        rala_backward(torch.empty_like(out), q, k, v, grid, rope, ws, plan=bplan, compiled=True)
    return log


@dataclass(frozen=True)
class CompileJob:
    """One unique compilation: the JIT's specialisation of a launch for a target."""

    module: str
    kernel: str
    signature: tuple
    constexprs: tuple
    attrs: tuple
    num_warps: int
    cc: int

    def config(self) -> str:
        """A short description: dtype, block sizes, warps, RoPE source, layout, merge fusion."""
        names = [k for k, _ in self.signature]
        const = {names[path[0]]: val for path, val in self.constexprs}
        dt = self.signature[0][1].lstrip("*")
        if "CW" in const:  # the parallel merges: chunk width x split records per load
            parts = [dt, f"CW{const['CW']} SB{const['SB']}", f"w{self.num_warps}"]
        else:
            parts = [
                dt,
                f"BN{const.get('BLOCK_N', '-')}",
                f"DB{const.get('DB', 2 * const.get('PB', 0)) or '-'}",
                f"w{self.num_warps}",
            ]
        if "ROPE_FROM_MEM" in const:
            parts.append("rope:tab" if const["ROPE_FROM_MEM"] else "rope:calc")
        unit = [k for k, v in const.items() if v == 1 and k[0] == "s" and k[-1] in "nd"]
        if unit:
            parts.append("unit:" + ",".join(unit))
        if const.get("FUSE_MERGE"):
            parts.append("fused-merge")
        return " ".join(parts)


def job_for(launch: Launch, arch: Arch) -> CompileJob:
    """Specialise `launch` exactly as Triton's JIT would for a call on `arch`."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    backend = make_backend(GPUTarget("cuda", arch.cc, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs, debug=False)
    bound, spec, opts = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)

    def freeze(v):
        return tuple(tuple(x) for x in v) if isinstance(v, list) else v

    return CompileJob(
        module=fn.fn.__module__,
        kernel=fn.__name__,
        signature=tuple(signature.items()),
        constexprs=tuple(sorted(constexprs.items())),
        attrs=tuple(sorted((k, freeze(v)) for k, v in attrs.items())),
        num_warps=options.num_warps,
        cc=arch.cc,
    )


@dataclass
class Result:
    job: CompileJob
    regs: int = 0
    local: int = 0  # bytes of register spills per thread (ptxas: spill stores), the check's criterion
    stack: int = 0  # bytes of stack frame per thread (cuobjdump; e.g. the fp32 division's slow path)
    smem: int = 0  # dynamic shared memory per program (bytes)
    scalar16: int = 0  # 2-byte scalar global loads + stores in the PTX (expected only in the masked tail)
    vec: int = 0  # 16-byte global accesses in the PTX: ld/st .v4.b32 and cp.async.cg (pipelined loads)
    divs: int = 0  # fp32 divisions and reciprocals in the PTX (div.*.f32, rcp.*.f32): per token, not per element
    error: str = ""
    seconds: float = 0.0
    cases: list = field(default_factory=list)

    def occupancy(self, arch: Arch) -> int:
        """Programs per SM (registers, shared memory, warps, blocks)."""
        if self.error:
            return 0
        per_warp = -(-max(self.regs, 1) * 32 // 256) * 256
        by_regs = (arch.regs_sm // per_warp) // self.job.num_warps
        by_smem = arch.smem_sm // (self.smem + 1024) if self.smem else arch.blocks_sm
        return min(by_regs, by_smem, arch.warps_sm // self.job.num_warps, arch.blocks_sm)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack + local bytes per thread) of the single function in `cubin`, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"cuobjdump printed no resource usage: {out[:200]}")
    return int(m.group(1)), max(int(m.group(2)), int(m.group(4)))


def compile_job(job: CompileJob) -> Result:
    """Compile one job (in this process); never raises: a failure is the result's `error`."""
    import importlib
    import io
    import time

    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    res = Result(job)
    t0 = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(job.module), job.kernel)
        attrs = {k: [list(x) for x in v] for k, v in job.attrs}
        src = ASTSource(fn, dict(job.signature), dict(job.constexprs), attrs)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # triton prints ptxas' -v log when dump_ptxas_log is set
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = True  # never a cache hit: ptxas' log is the spill evidence
            ck = triton_compile(src, target=GPUTarget("cuda", job.cc, 32), options={"num_warps": job.num_warps})
        res.regs, res.stack = resource_usage(ck.asm["cubin"])
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
        res.local = max((int(a) for a, _ in spills), default=0)
        if not spills:
            raise RuntimeError("no ptxas -v report of spills in the compile log")
        res.smem = int(ck.metadata.shared)
        ptx = ck.asm["ptx"]
        res.scalar16 = len(re.findall(r"(?:ld|st)\.global\S*\.b16\s", ptx))
        res.vec = len(re.findall(r"(?:(?:ld|st)\.global\S*\.v4\.b32|cp\.async\.cg\.shared\.global)\s", ptx))
        res.divs = len(re.findall(r"\b(?:div|rcp)\.[a-z.]*f32\s", ptx))
    except Exception as exc:  # a compile error is a row, not a crash
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    res.seconds = time.perf_counter() - t0
    return res


def full_cases(archs, levels=LEVELS, dtypes=tuple(DTYPES), head_dims=HEAD_DIMS):
    """Every (arch, level, dtype, d, shape) of the full table."""
    return [
        (arch, level, dt, d, shape)
        for arch in archs
        for level in levels
        for dt in dtypes
        for d in head_dims
        for shape in (OP_SHAPES if level == "op" else MIXER_SHAPES)
    ]


def ci_cases(archs):
    """A representative subset for CI: every kernel on each target, both layouts (op: channel-major,
    in-kernel RoPE, fused merge at B*h = 64; mixer: token-major, tables, separate merge at B*h = 1), both
    d-blocks in 16-bit (op at d = 64: d-block 64; mixer at d = 96: d-block 128, KV's split value columns, dKV in
    column steps; bf16, whose table entries and code fp16 shares) and fp32 on the larger d-block (op, d = 96),
    where register pressure is highest."""
    cases = []
    for arch in archs:
        cases.append((arch, "op", "bf16", 64, (64, 1, 56, 56)))
        cases.append((arch, "mixer", "bf16", 96, (1, 1, 56, 56)))
        cases.append((arch, "op", "fp32", 96, (8, 4, 56, 56)))
    return cases


def enumerate_jobs(cases):
    """{CompileJob: [case descriptions]} over `cases` (deduplicated: d = 96 and 128 share every
    kernel binary, for instance), and {(arch, kernel): launches}."""
    jobs: dict[CompileJob, list[str]] = {}
    launched: dict[tuple[str, str], int] = {}
    for arch, level, dt, d, shape in cases:
        case = f"{arch.name} {level} {dt} d{d} B{shape[0]} h{shape[1]} {shape[2]}x{shape[3]}"
        for launch in planned_launches(level, shape, d, DTYPES[dt], arch):
            job = job_for(launch, arch)
            jobs.setdefault(job, []).append(case)
            launched[(arch.name, launch.name)] = launched.get((arch.name, launch.name), 0) + 1
    return jobs, launched


def all_kernel_names() -> list[str]:
    from mechanisms.rala import triton_bwd, triton_kernels

    return sorted(
        n
        for mod in (triton_kernels, triton_bwd)
        for n in vars(mod)
        if n.startswith("_") and n.endswith("_kernel") and hasattr(getattr(mod, n), "params")
    )


def failures(results: list[Result], launched: dict, archs) -> list[str]:
    """What fails the check: a compile error, local memory (spills), shared memory over the target's
    limit, zero occupancy, or a kernel that no configuration launches on some target."""
    out = []
    by_name = {a.cc: a for a in archs}
    for r in results:
        arch = by_name[r.job.cc]
        tag = f"{arch.name} {r.job.kernel} {r.job.config()}"
        if r.error:
            out.append(f"{tag}: compile error: {r.error}")
            continue
        if r.local:
            out.append(f"{tag}: {r.local} B of local memory per thread (spills), {r.regs} registers")
        if r.smem > arch.smem_block:
            out.append(f"{tag}: {r.smem} B shared memory > {arch.smem_block}")
        if r.occupancy(arch) < 1:
            out.append(f"{tag}: cannot be resident on an SM")
    for arch in archs:
        for name in all_kernel_names():
            if not launched.get((arch.name, name)):
                out.append(f"{arch.name} {name}: no configuration launches it")
    return out
