"""Seeded fuzzing of the CLI: malformed suites, --set values, result CSVs, gate inputs, output paths,
checkpoints. Used by tests/test_fuzz_cli.py; `python tests/fuzz_cli.py [N_SCALE]` prints the figures per
input kind (inputs, exit 0, exit 2, tracebacks, hangs, files written outside the output folder).

Each input is one in-process call of `attnbench.cli.main(argv)` with stdout/stderr captured and a
per-input wall-clock limit (SIGALRM, so a hang fails instead of hanging CI). An input passes when it
exits 0, or exits 2 with exactly one `attnbench: error:` line on stderr, raises nothing else, stays
within its limit and writes nothing outside its output folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import sys
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 20.0  # per input; every input here is plan-only, tiny or invalid

BASE_SUITE = {
    "name": "fz",
    "mechanisms": ["softmax_eager"],
    "level": "op",
    "dim": 8,
    "heads": 1,
    "resolution": 2,
    "batch": 1,
    "dtype": "fp32",
    "pass": "fwd",
    "device": "cpu",
    "warmup": 0,
    "repeats": {"min": 1, "max": 1, "min_time_s": 0},
    "timeout_s": 5,
    "verify": False,
    "metrics": ["flops"],
}
KEYS = [
    "name",
    "plugins",
    "mechanisms",
    "level",
    "models",
    "dim",
    "heads",
    "resolution",
    "grid",
    "batch",
    "dtype",
    "pass",
    "device",
    "threads",
    "warmup",
    "repeats",
    "timeout_s",
    "isolation",
    "verify",
    "options",
    "gpu",
    "metrics",
    "data",
    "checkpoints",
    "flush_l2",
    "cuda_graphs",
    "memory_limit_gb",
    "tf32",
    "unknown_key",
]
OPTION_TARGETS = {
    "agent": ["agent_num"],
    "performer": ["features", "seed"],
    "nystromformer": ["landmarks", "pinv_iters"],
    "flatten": ["focusing_factor", "kernel_size"],
    "polaformer": ["alpha", "kernel_size"],
    "rala_eager": ["gate", "lepe", "weights"],
    "softmax_eager": ["bogus"],
    "ravlt_t": ["checkpoint", "mixer_late", "ema"],
    "nope": ["x"],
}


class Hang(BaseException):
    """Raised by the watchdog when an input runs past its limit."""


@dataclass
class Outcome:
    kind: str
    argv: list[str]
    rc: object
    stdout: str
    stderr: str
    verdict: str  # ok0 | ok2 | traceback | hang | bad_exit | bad_error_lines | outside | bad_output
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Tally:
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)
    failures: list[Outcome] = field(default_factory=list)


def scalar_pool(rng: random.Random):
    return rng.choice(
        [
            0,
            -1,
            1,
            2,
            3,
            7,
            64,
            1_000,
            10**9,
            10**30,
            2**63,
            -(2**63),
            1.5,
            0.0,
            -0.0,
            float("inf"),
            float("nan"),
            -float("inf"),
            1e308,
            1e-300,
            True,
            False,
            None,
            "",
            "x",
            "a[/]b",
            "[bold red]x",
            "[/]",
            "a" * 100_000,
            "/abs/path/fz",
            "../../fz_escape",
            "fz/../../../up",
            "name\x00nul",
            "é✓",
            "\t",
            "${HOME}",
            "~",
            ".",
            "..",
            "family:linear",
            "family:",
            "fp32",
            "cuda",
            "model",
            "x" * 300,
        ]
    )


def value_pool(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if roll < 0.55 or depth > 2:
        return scalar_pool(rng)
    if roll < 0.75:
        return [value_pool(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if roll < 0.9:
        return {str(scalar_pool(rng))[:20]: value_pool(rng, depth + 1) for _ in range(rng.randrange(0, 3))}
    return [[1, 2], [3, "x"]]


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=10**9)


def suite_text(rng: random.Random) -> bytes:
    """A suite file: the tiny base with 1-3 mutations, or a malformed / hostile document."""
    roll = rng.random()
    if roll < 0.12:  # hostile text
        choice = rng.randrange(9)
        if choice == 0:  # billion laughs
            lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
            for i in range(1, 10):
                prev = chr(ord("a") + i - 1)
                lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ",".join([f"*{prev}"] * 9) + "]")
            return ("\n".join(lines) + "\nname: bomb\nmechanisms: [softmax_eager]\n").encode()
        if choice == 1:
            depth = rng.choice([100, 1000, 10_000, 50_000])
            return (f"name: deep\nmechanisms: [softmax_eager]\noptions: {'[' * depth}{']' * depth}\n").encode()
        if choice == 2:
            return _yaml(BASE_SUITE).encode() + b"name: dup\n"
        if choice == 3:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        if choice == 4:
            text = _yaml(BASE_SUITE)
            return text[: rng.randrange(len(text))].encode()
        if choice == 5:
            return _yaml(BASE_SUITE).encode() + b"note: \xff\xfe\n"
        if choice == 6:
            return b"- a\n- b\n"
        if choice == 7:
            return b"name: x\n  mechanisms: [\n"
        return b"name: " + b"x" * 200_000 + b"\nmechanisms: [softmax_eager]\n"
    suite = json.loads(json.dumps(BASE_SUITE))
    for _ in range(rng.randrange(1, 4)):
        where = rng.random()
        if where < 0.55:
            suite[rng.choice(KEYS)] = value_pool(rng)
        elif where < 0.7:
            suite.setdefault("gpu", {})
            if isinstance(suite["gpu"], dict):
                suite["gpu"][rng.choice(KEYS)] = value_pool(rng)
        elif where < 0.85:
            mech = rng.choice(list(OPTION_TARGETS))
            suite["options"] = {mech: {rng.choice(OPTION_TARGETS[mech]): value_pool(rng)}}
            if mech in ("ravlt_t",):
                suite["models"] = ["ravlt_t"]
        else:
            suite["name"] = scalar_pool(rng)
    try:
        return _yaml(suite).encode()
    except Exception:
        return b"name: unrepresentable\n"


def set_values(rng: random.Random) -> list[str]:
    out = []
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(
            KEYS
            + [
                "repeats.min",
                "repeats.max",
                "gpu.batch",
                "options.performer.features",
                "options.agent.agent_num",
                "gpu.unknown",
                "a.b.c",
                "",
                "=",
                "name.x",
            ]
        )
        value = rng.choice(
            [
                json.dumps(value_pool(rng)),
                "[1,2",
                "{a: 1",
                "&a [*a]",
                ".inf",
                ".nan",
                "1_000",
                "10**9",
                "0x10",
                "a[/]b",
                "'a[/]b'",
                '"a[/]b"',
                "!!python/object:os.system",
                "[" * 3000 + "]" * 3000,
                "~",
                "yes",
                "2026-01-01",
                "1e999",
                "- a\n- b",
                "{gpu: 5}",
                "\x00",
            ]
        )
        out += ["--set", f"{key}={value}" if rng.random() < 0.95 else key]
    return out


def mutate_csv(rng: random.Random, text: str) -> bytes:
    lines = text.splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    choice = rng.randrange(14)
    cols = header.strip().split(",")
    if choice == 0:  # unbalanced quote in the middle
        i = rng.randrange(len(rows))
        rows[i] = rows[i].replace(",", ',"', 1)
    elif choice == 1:  # non-UTF-8 line
        rows.insert(rng.randrange(len(rows) + 1), "\xff\xfe bad\n")
        return (header + "".join(rows)).encode("latin-1", "replace")
    elif choice == 2:  # a short row
        rows.insert(rng.randrange(len(rows) + 1), "1,2,3\n")
    elif choice == 3:  # a second header
        rows.insert(rng.randrange(len(rows) + 1), header)
    elif choice in (4, 5, 6, 7):  # one field replaced by a nasty value
        col = rng.choice(
            [
                c
                for c in (
                    "value",
                    "batch",
                    "height",
                    "width",
                    "tokens",
                    "schema_version",
                    "status",
                    "stat",
                    "metric",
                    "mechanism",
                    "level",
                    "dim",
                    "heads",
                    "pass",
                    "case_id",
                    "rep",
                )
                if c in cols
            ]
        )
        val = rng.choice(
            [
                "nan",
                "inf",
                "-inf",
                "1.5",
                "1e30",
                str(10**30),
                "",
                "x",
                "a[/]b",
                "[bold]x",
                "-1",
                "0",
                "2",
                "1e999",
                "None",
                "\x00",
            ]
        )
        idx = cols.index(col)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(rows))
            fields = next(csv.reader([rows[i]]))
            if len(fields) == len(cols):
                fields[idx] = val
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerow(fields)
                rows[i] = buf.getvalue()
    elif choice == 8:  # truncated mid-file
        body = "".join(rows)
        return (header + body[: rng.randrange(len(body))]).encode()
    elif choice == 9:  # empty / header only / garbage
        return rng.choice([b"", header.encode(), b"\x00\x01\x02", b"a,b\n1,2\n"])
    elif choice == 10:  # columns shuffled
        rng.shuffle(cols)
        return (",".join(cols) + "\n" + "".join(rows)).encode()
    elif choice == 11:  # duplicated rows
        rows = rows + rows
    elif choice == 12:  # extra column
        rows = [r.rstrip("\n") + ",extra\n" for r in rows]
    else:  # BOM and CRLF
        return ("\ufeff" + header + "".join(rows)).replace("\n", "\r\n").encode()
    return (header + "".join(rows)).encode()


def benchmark_json(rng: random.Random) -> bytes:
    data = [rng.choice([1e-3, 1.1e-3, 0.9e-3]) for _ in range(rng.randrange(0, 8))]
    choice = rng.randrange(10)
    if choice == 0:
        return b'{"benchmarks": [{"name": "a", "stats": {"data": [1e999999]}}]}'
    if choice == 1:
        data = data + [float("nan")]
    if choice == 2:
        return b'{"benchmarks": [{"name": "a", "stats": {"data": "abc"}}]}'
    if choice == 3:
        return b'{"benchmarks": {"a": 1}}'
    if choice == 4:
        return b"[" * 100_000 + b"]" * 100_000
    if choice == 5:
        return b'{"benchmarks": [{"name": "a", "stats": {"data": [[1, 2], [3]]}}]}'
    if choice == 6:
        return b'{"benchmarks": [{"name": "a", "stats": {"data": [-1, 0, 1e308, 1e308]}}]}'
    if choice == 7:
        return b"\xff\xfe{"
    doc = {"benchmarks": [{"name": "a", "fullname": "t::a", "stats": {"data": data}}]}
    return json.dumps(doc, allow_nan=True).encode()


# -- execution -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def watchdog(seconds: float):
    def fire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def invoke(kind: str, argv: list[str], limit_s: float = LIMIT_S) -> Outcome:
    import time

    from attnbench.cli import main

    t0 = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    rc: object = None
    detail = ""
    verdict = ""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), watchdog(limit_s):
                rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Hang as exc:
            verdict, detail = "hang", str(exc)
        except KeyboardInterrupt:
            raise
        except BaseException:
            verdict, detail = "traceback", traceback.format_exc()
    stdout, stderr = out.getvalue(), err.getvalue()
    if not verdict:
        if "Traceback (most recent call last)" in stdout + stderr:
            verdict, detail = "traceback", stderr[-2000:]
        elif rc == 0 or (rc == 1 and argv[:1] == ["gate"] and "FAIL:" in stdout):  # gate: 1 = a regression
            verdict = "ok0"
        elif rc == 2:
            n = sum(line.startswith("attnbench: error:") for line in stderr.splitlines())
            verdict = "ok2" if n == 1 else "bad_error_lines"
            detail = stderr[-600:]
        else:
            verdict, detail = "bad_exit", f"rc={rc!r} {stderr[-600:]}"
    return Outcome(kind, argv, rc, stdout, stderr, verdict, detail, time.perf_counter() - t0)


def _snapshot(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


def fuzz(workdir: Path, scale: float = 1.0, seed: int = 17, progress: Callable[[str], None] | None = None) -> dict:
    """Run every input kind under `workdir`; return {kind: Tally}."""
    import numpy as np

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    outside = workdir / "outside"  # must stay empty
    outside.mkdir(exist_ok=True)
    jail = workdir / "cwd"
    jail.mkdir(exist_ok=True)
    tallies: dict[str, Tally] = {}
    old_cwd = os.getcwd()
    os.chdir(jail)
    sentinels = [Path("/abs"), Path("/up"), REPO.parent / "fz_escape"]
    before = {str(s): s.exists() for s in sentinels}
    try:
        from attnbench.cli import main

        # a small real run: the source of the results-file mutations
        seed_csv = workdir / "seed.csv"
        seed_suite = workdir / "seed.yaml"
        seed_suite.write_text(
            _yaml(
                {
                    **BASE_SUITE,
                    "name": "seed",
                    "mechanisms": ["softmax_eager", "rala_eager"],
                    "resolution": [2, 3],
                    "batch": [1, 2],
                    "metrics": ["latency", "flops"],
                    "repeats": {"min": 5, "max": 5, "min_time_s": 0},
                }
            )
        )
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["run", str(seed_suite), "--out", str(seed_csv), "--no-progress"]) == 0
        seed_text = seed_csv.read_text()
        samples_text = seed_csv.with_name("seed.samples.csv").read_text()

        def record(outcome: Outcome) -> None:
            if os.environ.get("FUZZ_VERBOSE"):
                print(outcome.kind, outcome.verdict, [a[:60] for a in outcome.argv], file=sys.__stderr__, flush=True)
            tally = tallies.setdefault(outcome.kind, Tally())
            tally.counts["inputs"] += 1
            tally.seconds += outcome.seconds
            tally.counts[outcome.verdict] += 1
            if outcome.verdict not in ("ok0", "ok2"):
                tally.failures.append(outcome)

        n = {
            k: max(1, int(v * scale))
            for k, v in {
                "suite": 330,
                "set": 250,
                "results": 220,
                "gate": 110,
                "out": 60,
                "checkpoint": 8,
                "argv": 40,
            }.items()
        }

        for i in range(n["suite"]):
            path = workdir / "suites" / f"s{i}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(suite_text(rng))
            out = workdir / "out" / f"s{i}.csv"
            record(invoke("suite", ["run", str(path), "--dry-run", "--no-progress", "--out", str(out)]))
        # special paths: a FIFO, a directory, /dev/zero, a missing file
        fifo = workdir / "fifo.yaml"
        if not fifo.exists():
            os.mkfifo(fifo)
        for special in (fifo, workdir, Path("/dev/zero"), workdir / "missing.yaml"):
            record(invoke("suite", ["run", str(special), "--dry-run", "--no-progress"]))
            record(invoke("results", ["report", str(special)]))
        base = workdir / "base.yaml"
        base.write_text(_yaml(BASE_SUITE))
        for i in range(n["set"]):
            record(
                invoke(
                    "set",
                    [
                        "run",
                        str(base),
                        "--dry-run",
                        "--no-progress",
                        "--out",
                        str(workdir / "out" / f"set{i}.csv"),
                        *set_values(rng),
                    ],
                )
            )
        for i in range(n["results"]):
            d = workdir / "res" / str(i)
            d.mkdir(parents=True, exist_ok=True)
            path = d / "r.csv"
            path.write_bytes(mutate_csv(rng, seed_text))
            if rng.random() < 0.5:
                (d / "r.samples.csv").write_bytes(
                    mutate_csv(rng, samples_text) if rng.random() < 0.5 else samples_text.encode()
                )
            cmd = rng.choice(["report", "report_md", "report_x", "compare", "gate"])
            if cmd == "report":
                argv = ["report", str(path)]
            elif cmd == "report_md":
                argv = [
                    "report",
                    str(path),
                    "--format",
                    rng.choice(["md", "latex", "csv"]),
                    "--baseline",
                    rng.choice(["softmax_eager", "rala_eager", "nope", "a[/]b"]),
                ]
            elif cmd == "report_x":
                a, b = rng.choice(
                    [
                        ("softmax_eager", "rala_eager"),
                        ("softmax_eager", "softmax_eager"),
                        ("x", "x"),
                        ("a[/]b", "rala_eager"),
                    ]
                )
                argv = ["report", str(path), "--crossover", a, b, "--min-tokens", str(rng.choice([0, 4, -1, 10**9]))]
            elif cmd == "compare":
                argv = ["compare", str(seed_csv), str(path)]
            else:
                argv = ["gate", str(seed_csv), str(path)]
            record(invoke("results", argv))
        for i in range(n["gate"]):
            d = workdir / "gate" / str(i)
            d.mkdir(parents=True, exist_ok=True)
            if rng.random() < 0.5:
                a, b = d / "a.json", d / "b.json"
                a.write_bytes(benchmark_json(rng))
                b.write_bytes(benchmark_json(rng))
            else:
                a, b = d / "a.csv", d / "b.csv"
                a.write_text(seed_text)
                b.write_text(seed_text)
                rows = samples_text.splitlines(keepends=True)
                bad = rng.choice(["nan", "inf", "-inf", "1e999", "x", "", "-1", "0"])
                for _ in range(rng.randrange(1, 6)):
                    j = rng.randrange(1, len(rows))
                    parts = rows[j].rstrip("\n").split(",")
                    parts[-1] = bad
                    rows[j] = ",".join(parts) + "\n"
                (d / "a.samples.csv").write_text(samples_text)
                (d / "b.samples.csv").write_text("".join(rows))
            extra = rng.choice(
                [
                    [],
                    ["--threshold", rng.choice(["5%", "x", "-1", "nan", "1e999%", "150"])],
                    ["--alpha", rng.choice(["0.05", "2", "nan"])],
                    ["--metric", "a[/]b"],
                ]
            )
            record(invoke("gate", ["gate", str(a), str(b), *extra]))
        for i in range(n["out"]):
            name = rng.choice(
                [
                    "x" * 300 + ".csv",
                    "a\x00b.csv",
                    "dir.csv/",
                    "noext",
                    "ok.csv",
                    "sub/deeper/ok.csv",
                    "../outside/esc.csv",
                    "[bold]x.csv",
                    "ok.CSV",
                    "a" * 5000,
                    "",
                    " ",
                    "-",
                    ".csv",
                    "x.env.json",
                    "blocked.csv",
                ]
            )
            d = workdir / "outs" / str(i)
            d.mkdir(parents=True, exist_ok=True)
            (d / "blocked.env.json").mkdir(exist_ok=True)  # a directory where FILE.env.json should go
            suite = d / "s.yaml"
            suite.write_text(
                _yaml(
                    {
                        **BASE_SUITE,
                        "name": rng.choice(
                            ["fz", "/abs/path/fz", "../../fz_escape", "a[/]b", "fz/../../../up", "x" * 400]
                        ),
                    }
                )
            )
            argv = ["run", str(suite), "--no-progress"]
            if name or rng.random() < 0.5:
                argv += ["--out", str(d / name) if name not in ("", " ", "-") else name]
            os.chdir(d)
            try:
                record(invoke("out", argv))
            finally:
                os.chdir(jail)
        torch_ckpts = _checkpoints(workdir / "ckpt", rng, n["checkpoint"])
        for j, (path, model, good) in enumerate(torch_ckpts):
            suite = workdir / "ckpt" / f"s{j}.yaml"
            suite.write_text(
                _yaml(
                    {
                        **BASE_SUITE,
                        "name": "ck",
                        "level": "model",
                        "models": [model],
                        "resolution": 32,
                        "metrics": ["flops"],
                        "batch": 1,
                        "options": {model: {"checkpoint": str(path)}},
                    }
                )
            )
            out_csv = workdir / "ckpt" / f"s{j}.csv"
            outcome = invoke("checkpoint", ["run", str(suite), "--no-progress", "--out", str(out_csv)])
            if outcome.verdict == "ok0":  # bad weights must be an error row, never a measurement
                from attnbench import results

                statuses = set(results.load(out_csv)["status"])
                if statuses != ({"ok"} if good else {"error"}):
                    outcome.verdict, outcome.detail = "bad_output", f"statuses {statuses} for {path}"
            record(outcome)
        shutil.rmtree(workdir / "ckpt", ignore_errors=True)
        # cases that would run far past timeout_s in-process: refused by prediction, within the limit
        for j, over in enumerate(
            [
                {"resolution": 1_000, "mechanisms": ["softmax_sdpa"]},
                {"resolution": 1_000},
                {"resolution": 1_000, "batch": 64, "mechanisms": ["softmax_sdpa"]},
                {"mechanisms": ["performer"], "options": {"performer": {"features": 10**9}}, "resolution": 64},
                {"grid": [[4, 30_000]], "resolution": 2},
            ]
        ):
            suite = workdir / f"slow{j}.yaml"
            slow = {**BASE_SUITE, "name": "slow", "metrics": ["latency"], "timeout_s": 5, "rounds": 1, **over}
            suite.write_text(_yaml(slow))  # one round: measured in this process, where a runaway case cannot be killed
            out_csv = workdir / f"slow{j}.csv"
            outcome = invoke("hang", ["run", str(suite), "--no-progress", "--out", str(out_csv)], limit_s=60)
            if outcome.verdict == "ok0":
                from attnbench import results

                df = results.load(out_csv)
                if not (df["status"] == "skipped").any():
                    outcome.verdict, outcome.detail = "bad_output", f"nothing refused: {set(df['status'])}"
            record(outcome)
        for _ in range(n["argv"]):
            argv = rng.choice(
                [
                    ["list", "--family", rng.choice(["nope", "a[/]b", "linear", "[bold]x"])],
                    ["list", "--device", rng.choice(["cpu", "tpu", "a[/]b"])],
                    ["list", "--plugin", rng.choice(["nope_module", "/missing.py", "a[/]b", str(workdir)])],
                    ["env", "--device", rng.choice(["cpu", "gpu5", "[/]"])],
                    ["report"],
                    ["gate", "a"],
                    ["run"],
                    ["bogus"],
                    ["--debug"],
                    ["report", str(seed_csv), "--min-tokens", rng.choice(["x", "-5", "1e3"])],
                    ["compare", str(seed_csv), str(seed_csv), "--metric", rng.choice(["latency", "nope", "a[/]b"])],
                ]
            )
            record(invoke("argv", argv))
        del np
    finally:
        os.chdir(old_cwd)
    escaped = [str(p) for p in outside.rglob("*")]
    escaped += [str(s) for s in sentinels if s.exists() and not before[str(s)]]
    # suite names such as "../../fz_escape" or "fz/../../../up" aim above outs/<i>/results: nothing may land
    # in outs/ itself (outs/outside/ is an explicit --out ../outside/esc.csv, which the user chose)
    outs = workdir / "outs"
    if outs.exists():
        escaped += [str(p) for p in outs.iterdir() if not p.name.isdigit() and p.name != "outside"]
    if escaped:
        tallies.setdefault("out", Tally()).counts["outside"] += len(escaped)
        tallies["out"].failures.append(Outcome("out", [], None, "", "", "outside", ", ".join(escaped[:20])))
    return tallies


def _checkpoints(d: Path, rng: random.Random, n: int) -> list[tuple[Path | str, str, bool]]:
    """Checkpoints for ravlt_t: valid, all-NaN, int64, inf, truncated, empty, missing, garbage."""
    import torch

    from attnbench.models import create_ravlt

    d.mkdir(parents=True, exist_ok=True)
    sd = create_ravlt("ravlt_t").state_dict()
    out = []
    for i in range(n):
        kind = i % 8
        path = d / f"c{kind}.pth"
        if path.exists():  # one file per kind (a RAVLT-T checkpoint is ~60 MB): later inputs reuse it
            kind = -1
        if kind == -1:
            pass
        elif kind == 0:
            torch.save({"model": sd}, path)
        elif kind == 1:
            torch.save(
                {"model": {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in sd.items()}},
                path,
            )
        elif kind == 2:
            torch.save({k: v.to(torch.int64) for k, v in sd.items()}, path)
        elif kind == 3:
            bad = dict(sd)
            key = rng.choice([k for k, v in sd.items() if v.is_floating_point()])
            bad[key] = bad[key].clone().fill_(float("inf"))
            torch.save(bad, path)
        elif kind == 4:
            torch.save(sd, path)
            path.write_bytes(path.read_bytes()[: rng.randrange(10, 2000)])
        elif kind == 5:
            path.write_bytes(b"")
        elif kind == 6:
            path = ""  # an empty path
        else:
            path = d / "missing.pth"
        out.append((path, "ravlt_t", i % 8 == 0))
    return out


def summary_table(tallies: dict) -> str:
    cols = ("inputs", "ok0", "ok2", "traceback", "hang", "bad_exit", "bad_error_lines", "bad_output", "outside")
    lines = ["kind        " + " ".join(f"{c:>9}" for c in cols)]
    for kind, tally in tallies.items():
        figures = " ".join(f"{tally.counts.get(c, 0):>9}" for c in cols)
        lines.append(f"{kind:<12}{figures} {tally.seconds:7.1f} s")
    total = Counter()
    for tally in tallies.values():
        total.update(tally.counts)
    lines.append(f"{'total':<12}" + " ".join(f"{total.get(c, 0):>9}" for c in cols))
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile
    import time

    sys.path.insert(0, str(REPO))
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    t0 = time.perf_counter()
    keep = os.environ.get("FUZZ_DIR")  # keep the inputs for a look with --debug
    with tempfile.TemporaryDirectory() as tmp:
        result = fuzz(Path(keep or tmp), scale=scale)
    print(summary_table(result))
    print(f"{time.perf_counter() - t0:.1f} s")
    for kind, tally in result.items():
        for f in tally.failures[:40]:
            print(f"--- {kind} {f.verdict} {[a[:80] for a in f.argv]}\n{f.detail[-700:]}")
