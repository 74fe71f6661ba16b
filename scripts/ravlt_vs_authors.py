"""Our RAVLT-T against the authors' published model, with the same weights, timed side by side in one process.

    PYTHONPATH=$PWD:<dir with einops> python scripts/ravlt_vs_authors.py --src RALA/classfication/RALA.py
        [--rounds 10] [--repeats 10] [--resolution 224] [--batch 1] [--threads N] [--variants NAME ...]
        [--out results/ravlt-vs-authors-cpu-DATE.csv]

--src names the authors' classification model file (none of their code is part of this project); it is loaded
as scripts/make_rala_fixtures.py loads it (timm and fvcore stubbed where missing; einops must be importable).
Their `RAVLT_T()` is built with a seeded init and its state_dict loaded strictly into ours
(attnbench.models.checkpoint.load_checkpoint, through the workload's `checkpoint` option), so both compute the
same function: every contestant's logits are checked against theirs (relative RMS error, `rel_err`) before
anything is timed. Inference (eval, torch.no_grad), fp32, on the CPU.

Contestants: the authors' model (eager), and ours built as a model-level case builds it
(attnbench.workloads.model.build_model_workload, the weights through its `checkpoint` option) in every
combination of `channels_last`, `compile: model` and `rala_compiled` as the stage 1-2 mixer
(`ravlt_t[rala_compiled]+cl+compiled`; `ravlt_t` is ours eager, published mixers). `--variants` picks some.
Each contestant's first call is timed on its own (`first_call_s`: compilation included where there is one),
then it is warmed up; rounds follow, each timing every contestant `--repeats` times in a seeded shuffled order,
so drift in the machine's speed falls on all of them. A round's ratio is a contestant's median over the authors'
median of the same round; the summary gives the median ratio over rounds and its spread (min, p20, p80, max).
The goal: our best contestant at most 0.8x the authors' eager latency.

Written: --out (one row per contestant: median latency, ratios, first call, graphs compiled during the rounds,
share of preempted repeats, rel_err), --out's `.rounds.csv` (every round's median per contestant and its ratio)
and `.env.json` (the environment fingerprint). Run it on an otherwise idle machine; a line for
results/README.md is printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from make_rala_fixtures import install_stubs, load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attnbench.loading import load_mechanisms  # noqa: E402
from attnbench.measure.compiler import graphs_compiled  # noqa: E402
from attnbench.measure.env import fingerprint  # noqa: E402
from attnbench.measure.timing import RepeatPolicy, time_fn  # noqa: E402
from attnbench.plan import model_variant  # noqa: E402
from attnbench.registry import Shape, get  # noqa: E402
from attnbench.verify import rel_err  # noqa: E402
from attnbench.workloads.inputs import CaseInputs  # noqa: E402
from attnbench.workloads.model import build_model_workload  # noqa: E402

AUTHORS = "authors"
MODEL = "ravlt_t"
GOAL = 0.8  # our best contestant at most this fraction of the authors' eager latency
MAX_REL_ERR = 1e-4  # fp32, same weights: the two models compute the same function
WARMUP = 3


@dataclass
class Contestant:
    name: str
    fn: Callable[[], Any]  # one timed inference call, returns the logits
    first_call_s: float = 0.0
    rel_err: float = 0.0
    rounds: list[float] = field(default_factory=list)  # each round's median, ms
    preempted: list[bool] = field(default_factory=list)


def our_variants() -> dict[str, dict[str, Any]]:
    """Name -> (mixer, options) of our contestants: every combination of channels_last, compile, rala_compiled."""
    out = {}
    for mixer, cl, compiled in itertools.product(("rala_eager", "rala_compiled"), (False, True), (False, True)):
        settings = {"channels_last": True} if cl else {}
        settings.update({"compile": "model"} if compiled else {})
        base = MODEL if mixer == "rala_eager" else f"{MODEL}[{mixer}]"
        out[model_variant(base, settings)] = {"mixer": mixer, "options": settings}
    return out


def authors_model(src: str, seed: int) -> torch.nn.Module:
    install_stubs()
    try:
        upstream = load_file(src)
    except ModuleNotFoundError as exc:
        raise SystemExit(f"cannot import {src}: {exc} (their file needs it: pip install {exc.name})") from None
    torch.manual_seed(seed)
    return upstream.RAVLT_T().eval()


def image(batch: int, size: int) -> torch.Tensor:
    """The input a model-level case of this shape gets (seed 0: attnbench.workloads.inputs)."""
    shape = Shape(batch, None, size, size, None, None)
    return CaseInputs(get("rala_eager"), "model", shape, "fp32", "cpu", "fwd").x()  # (B, 3, H, W)


def first_call(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def build(args: argparse.Namespace) -> list[Contestant]:
    theirs = authors_model(args.src, args.seed)
    x = image(args.batch, args.resolution)
    weights = Path(tempfile.mkdtemp(prefix="ravlt-vs-authors-")) / "authors-ravlt_t.pth"
    torch.save(theirs.state_dict(), weights)

    def authors_call():
        with torch.no_grad():
            return theirs(x)

    logits, seconds = first_call(authors_call)
    contestants = [Contestant(AUTHORS, authors_call, seconds)]
    variants = our_variants()
    chosen = args.variants or list(variants)
    unknown = [v for v in chosen if v not in variants]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {', '.join(variants)}")
    for name in chosen:
        spec = variants[name]
        options = {"checkpoint": str(weights), **spec["options"]}
        work = build_model_workload(
            MODEL,
            spec["mixer"],
            batch=args.batch,
            height=args.resolution,
            width=args.resolution,
            dtype="fp32",
            device="cpu",
            pass_="fwd",
            options=options,
        )
        out, seconds = first_call(work.fn)
        err = rel_err(out, logits)
        print(f"  {name}: first call {seconds:.2f} s, rel_err vs the authors' logits {err:.2e}", flush=True)
        if not err <= MAX_REL_ERR:
            raise SystemExit(f"{name} computes other logits than the authors' model (rel_err {err:.3g}); not timed")
        contestants.append(Contestant(name, work.fn, seconds, err))
    return contestants


def run_rounds(contestants: list[Contestant], args: argparse.Namespace) -> int:
    """Warm-up, then the interleaved rounds; returns the graphs dynamo compiled during the rounds."""
    for c in contestants:
        for _ in range(WARMUP):
            c.fn()
    policy = RepeatPolicy(args.repeats, args.repeats, 0.0)
    graphs = graphs_compiled()
    for r in range(args.rounds):
        order = np.random.default_rng([args.seed, r]).permutation(len(contestants)).tolist()
        for i in order:
            c = contestants[i]
            secs = time_fn(c.fn, device="cpu", warmup=0, policy=policy)
            c.rounds.append(statistics.median(secs) * 1e3)
            c.preempted += secs.preempted
        line = "  ".join(f"{c.name} {c.rounds[-1]:.1f}" for c in contestants)
        print(f"round {r + 1}/{args.rounds} (ms): {line}", flush=True)
    return graphs_compiled() - graphs


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q))


def summarise(contestants: list[Contestant], recompiles: int) -> list[dict[str, Any]]:
    authors = contestants[0].rounds
    rows = []
    for c in contestants:
        ratios = [ours / theirs for ours, theirs in zip(c.rounds, authors)]
        rows.append(
            {
                "contestant": c.name,
                "median_ms": statistics.median(c.rounds),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_p20": quantile(ratios, 0.2),
                "ratio_p80": quantile(ratios, 0.8),
                "ratio_max": max(ratios),
                "rounds": len(c.rounds),
                "first_call_s": c.first_call_s,
                "preempted": sum(c.preempted) / len(c.preempted) if c.preempted else 0.0,
                "rel_err": c.rel_err,
                "graphs_compiled_in_rounds": recompiles,
            }
        )
    return rows


def write(rows: list[dict[str, Any]], contestants: list[Contestant], out: Path, args: argparse.Namespace) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stem = str(out)[: -len(".csv")] if str(out).endswith(".csv") else str(out)
    authors = contestants[0].rounds
    with open(stem + ".rounds.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["contestant", "round", "median_ms", "ratio"])
        for c in contestants:
            for r, (ms, theirs) in enumerate(zip(c.rounds, authors)):
                writer.writerow([c.name, r, ms, ms / theirs])
    env = fingerprint("cpu", torch.get_num_threads())
    env["script"] = {k: v for k, v in vars(args).items()}
    Path(stem + ".env.json").write_text(json.dumps(env, indent=1, default=str) + "\n")


def report(rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    print(f"\nRAVLT-T {args.resolution}x{args.resolution}, batch {args.batch}, fp32, CPU, {torch.get_num_threads()}")
    print(f"threads, {args.rounds} rounds x {args.repeats} repeats; ratio = ours / the authors' eager, per round\n")
    print(f"{'contestant':40s} {'median ms':>10s} {'ratio':>7s} {'[p20, p80]':>16s} {'first call s':>13s}")
    for row in rows:
        spread = f"[{row['ratio_p20']:.2f}, {row['ratio_p80']:.2f}]"
        print(
            f"{row['contestant']:40s} {row['median_ms']:10.2f} {row['ratio_median']:7.2f} {spread:>16s} "
            f"{row['first_call_s']:13.2f}"
        )
    ours = [r for r in rows if r["contestant"] != AUTHORS]
    best = min(ours, key=lambda r: r["ratio_median"])
    verdict = "meets" if best["ratio_median"] <= GOAL else "misses"
    print(
        f"\nbest: {best['contestant']} at {best['ratio_median']:.2f}x the authors' eager ({verdict} the goal <= {GOAL})"
    )
    if rows[0]["graphs_compiled_in_rounds"]:
        print(f"warning: dynamo compiled {rows[0]['graphs_compiled_in_rounds']} graphs during the rounds")
    print(f"wrote {out} (+ .rounds.csv, .env.json); a line for results/README.md:")
    print(
        f"| `{out.name}` (+ `.rounds.csv`, `.env.json`) | our RAVLT-T (eager; channels_last, compile: model, "
        f"rala_compiled mixers in every combination) against the authors' published model with the same weights, "
        f"{args.resolution}², batch {args.batch}, fp32 inference, {args.rounds} interleaved round(s) of "
        f"{args.repeats} repeats: median latency, ratio to the authors per round (median, spread), first call | "
        f"`PYTHONPATH=$PWD python scripts/ravlt_vs_authors.py --src <RALA>/classfication/RALA.py` | ... | ... | "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, metavar="PATH", help="the authors' classfication/RALA.py")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per contestant and round (default 10)")
    parser.add_argument("--resolution", type=int, default=224, help="image size, a multiple of 32 (default 224)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="our contestants to time (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="weights and round orders")
    parser.add_argument("--out", default=None, help="results CSV (default results/ravlt-vs-authors-cpu-DATE.csv)")
    args = parser.parse_args(argv)
    if args.resolution % 32 or args.rounds < 1 or args.repeats < 1 or args.batch < 1:
        parser.error("--resolution must be a multiple of 32; --rounds, --repeats and --batch positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or REPO / "results" / f"ravlt-vs-authors-cpu-{dt.datetime.now(dt.timezone.utc):%Y%m%d}.csv")
    load_mechanisms()
    print(f"authors' model: {args.src}", flush=True)
    contestants = build(args)
    recompiles = run_rounds(contestants, args)
    rows = summarise(contestants, recompiles)
    write(rows, contestants, out, args)
    report(rows, args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
