"""Compile every RALA Triton kernel x launch configuration the planner can choose, for sm_80 and sm_90,
without a GPU; print a table and fail on a compile error, a spill, shared memory over the limit, a
kernel that cannot be resident, or a kernel that no configuration launches.

    PYTHONPATH=$PWD python scripts/aot_check.py [--arch sm_90 --arch sm_80] [--ci] [--jobs N] [--cache-dir DIR]
        [--kernel NAME ...] [--dtype fp16|bf16|fp32 ...] [--all-rows]

--ci: a representative subset (`aot.ci_cases`: every kernel on both targets, both layouts, d-blocks
64 and 128, bf16 and fp32) so the check fits CI's budget; without it, the full grid of
mechanisms/rala/aot.py (op/mixer x fp16/bf16/fp32 x d 32/64/96/128 x 5 shapes). The Triton cache goes to a
fresh temporary folder unless --cache-dir is given (a cold cache, as on a clean CI runner).
--kernel / --dtype: compile only those kernels / (full grid) dtypes, e.g. to recheck one changed kernel.
Exit 0 when every compilation is clean, 1 otherwise (the reasons are printed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels: the JIT, never the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.6's default, silences 3.9's warning
DTYPE_NAMES = ("fp16", "bf16", "fp32")  # = aot.DTYPES (imported after the environment is set)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", action="append", choices=("sm_90", "sm_80"), help="target (repeatable; default both)")
    p.add_argument("--ci", action="store_true", help="representative subset (CI)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compilations")
    p.add_argument("--cache-dir", help="Triton cache folder (default: a fresh temporary one)")
    p.add_argument("--all-rows", action="store_true", help="print every compilation (default: worst per kernel)")
    p.add_argument("--kernel", action="append", help="compile only this kernel, e.g. _merge_kernel (repeatable)")
    p.add_argument("--dtype", action="append", choices=DTYPE_NAMES, help="full grid: only this dtype (repeatable)")
    args = p.parse_args(argv)

    tmp = None
    if args.cache_dir:
        os.environ["TRITON_CACHE_DIR"] = args.cache_dir
    else:
        tmp = tempfile.TemporaryDirectory(prefix="aot-triton-")
        os.environ["TRITON_CACHE_DIR"] = tmp.name

    from mechanisms.rala import aot

    archs = [aot.ARCHS[a] for a in (args.arch or ["sm_90", "sm_80"])]
    t0 = time.perf_counter()
    cases = aot.ci_cases(archs) if args.ci else aot.full_cases(archs, dtypes=tuple(args.dtype or DTYPE_NAMES))
    jobs, launched = aot.enumerate_jobs(cases)
    if args.kernel:  # the launch check below still sees every kernel's launches
        unknown = sorted(set(args.kernel) - set(aot.all_kernel_names()))
        if unknown:
            print(f"aot_check: unknown kernel(s) {unknown}; known: {aot.all_kernel_names()}", file=sys.stderr)
            return 2
        jobs = {job: c for job, c in jobs.items() if job.kernel in args.kernel}
    n_cases = len({c for v in jobs.values() for c in v})
    n_launches = sum(launched.values())
    print(
        f"aot_check: {n_cases} cases, {n_launches} kernel launches -> {len(jobs)} unique compilations "
        f"for {', '.join(a.name for a in archs)} ({time.perf_counter() - t0:.1f} s to plan)",
        flush=True,
    )

    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        results = list(pool.map(aot.compile_job, list(jobs)))
    for r in results:
        r.cases = jobs[r.job]

    by_cc = {a.cc: a for a in archs}
    results.sort(key=lambda r: (-r.job.cc, r.job.kernel, r.job.config()))
    rows = results
    if not args.all_rows:  # per (arch, kernel): the row with most registers/spills, plus every failing one
        worst = {}
        for r in results:
            key = (r.job.cc, r.job.kernel)
            if key not in worst or (bool(r.error), r.local, r.regs) > (
                bool(worst[key].error),
                worst[key].local,
                worst[key].regs,
            ):
                worst[key] = r
        rows = [r for r in results if r in worst.values() or r.error or r.local]
    head = (
        f"{'arch':6s} {'kernel':16s} {'config':48s} {'regs':>4s} {'spill':>5s} {'smem':>6s} {'occ':>3s} "
        f"{'b16':>4s} {'v4':>4s} {'div':>4s} {'cases':>5s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        a = by_cc[r.job.cc]
        if r.error:
            print(f"{a.name:6s} {r.job.kernel:16s} {r.job.config():48s} ERROR {r.error}")
            continue
        print(
            f"{a.name:6s} {r.job.kernel:16s} {r.job.config():48s} {r.regs:4d} {r.local:5d} {r.smem:6d} "
            f"{r.occupancy(a):3d} {r.scalar16:4d} {r.vec:4d} {r.divs:4d} {len(r.cases):5d}"
        )
    for a in archs:
        mine = [r for r in results if r.job.cc == a.cc]
        print(
            f"{a.name}: {len(mine)} compilations, {sum(1 for r in mine if r.error)} errors, "
            f"{sum(1 for r in mine if r.local)} with spills, max regs {max((r.regs for r in mine), default=0)}, "
            f"{sum(1 for r in mine if r.scalar16)} with 2-byte scalar global accesses"
        )
    fails = aot.failures(results, launched, archs)
    total = time.perf_counter() - t0
    if fails:
        print(f"aot_check: FAILED ({len(fails)} problems, {total:.0f} s):")
        for f in fails:
            print("  " + f)
        return 1
    print(f"aot_check: ok, {len(results)} compilations clean in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
