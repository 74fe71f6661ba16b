"""Every command in the ```bash blocks of README.md and docs/*.md is executed here, so the docs cannot drift
from behaviour.

Commands are extracted, not hard-coded: `\\` continuations joined, `# comments` dropped, `a|b|c` choices
in an option and `[--flag]` optional parts expanded into one command each. They run in order (README.md
first, then docs/*.md by name), in a scratch folder that links the checkout's packages, suites, scripts and
tests, with the test's Python first on PATH (a leading `.venv/bin/python` is that Python too); a plain
`python -m attnbench ...` runs in a child forked from one process that imported torch and the command line
once (tests/command_server.py), every other command through the shell. Before a
document's commands run, its file blocks are written to the scratch folder: a ```python or ```yaml block
whose first line is `# NAME.py` / `# NAME.yaml` is the file NAME. Its other ```python blocks run after its
commands, as typed into a notebook (`python -c`, so worker processes do not re-import them).

Placeholders are replaced by files made by earlier commands (PLACEHOLDERS). Commands and scripts matching
SKIP are not run (reason given); LONG commands run with `--dry-run` (checked and planned, not measured);
other full `run X.yaml` commands get QUICK (3 repeats, one sweep: every case, measured briefly), in 3 rounds
where compare/gate read the file and 1 elsewhere; `--plot DIR` is kept on the first command that has it only
(the md|latex|csv expansions plot the same), and a command shown in two documents runs once. To add a command
that cannot run on a CPU CI machine, add a pattern to SKIP with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from command_server import CommandServer

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def documents() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


SKIP = {  # pattern (searched in the command or script) -> why it is not executed here
    r"^python3? -m venv\b|^pip install|^\. \.venv": "set-up: needs the network (make setup / .ci/run do it)",
    r"^make (setup|run|test)\b": "the whole set-up plus a full suite or the whole test suite (CI runs make test)",
    r"^python -m pytest\b|pytest -q --benchmark-disable -n 2 tests$": "the test suite itself (this test is in it)",
    r"^ruff\b": "the formatter and linter over the tree (make test runs them)",
    r"make_docs\.py( --check)?$": "rewrites or checks the docs in the checkout (tests/test_docs.py does that check)",
    r"gpu_check\.sh --budget|torchrun|--device cuda|device=cuda|nvidia-smi": "GPU only",
    r"aot_check\.py --jobs": "the full ahead-of-time grid compiles for minutes (tests/test_rala_aot.py runs --ci)",
    r"^ray start": "starts a node of a Ray cluster (tests/test_ray_executor.py runs a local instance)",
    r"--address head:": "needs a running Ray cluster at head:6379 (tests/test_ray_executor.py covers --executor ray)",
    r"load_checkpoint\(": "needs a released RAVLT checkpoint (tests/test_checkpoint.py covers loading)",
    r"attnbench ab ": "checks out a second tree and runs it (tests/test_rounds.py runs `ab` on two trees, a revision)",
}
# what may be skipped at all: set-up, the checks CI runs anyway, GPU-only, a Ray cluster, a checkpoint
SKIPPABLE = r"^make |venv|^pip |pytest|^ruff|make_docs|gpu_check|torchrun|cuda|aot_check|^ray start|--address head:"
SKIPPABLE += r"|load_checkpoint|attnbench ab "
LONG = (r"run suites/resolution\.yaml", r"run suites/(batch|models|rank|accuracy|rala_kernels\w*)\.yaml")
# full runs of the small suites keep every case but measure 3 repeats, one sweep; the runs whose file compare/gate
# read (GATED) keep 3 rounds, the fewest a verdict needs; the others take 1 (in-process: no worker start-ups)
QUICK = "--set sweeps=1 --set warmup=1 --set warmup_s=0 --set 'repeats={min: 3, max: 3, min_time_s: 0}'"
GATED = r"--out results/smoke\.csv"
TINY = "--set mechanisms=[softmax_sdpa] --set level=op --set pass=fwd --set resolution=[4]"
PLACEHOLDERS = {  # docs text -> file made by an earlier command (names relative to the scratch folder)
    "results/<run>.csv": "results/smoke.csv",
    "A.csv B.csv": "results/smoke.csv results/smoke_b.csv",
    "BASELINE.csv NEW.csv": "results/smoke.csv results/smoke_b.csv",
    "H100.csv A100.csv": "results/smoke.csv results/smoke_b.csv",
    "A1.csv A2.csv -- B1.csv B2.csv": "results/smoke.csv results/smoke.csv -- results/smoke_b.csv results/smoke_b.csv",
    # the gating recipe and `ab` on two tiny cases (the commands and their files are the docs')
    "suites/smoke.yaml --out base.csv": f"suites/smoke.yaml --out results/base.csv --rounds 3 {TINY}",
    "suites/smoke.yaml --out new.csv": f"suites/smoke.yaml --out results/new.csv --rounds 3 {TINY}",
    "gate base.csv new.csv": "gate results/base.csv results/new.csv",
}
VERDICTS = r"attnbench (gate|ab)\b"  # exit 1 is a verdict (a regression found), not a failure of the command
# keeps the pytest-benchmark steps to a few seconds: the suite cut to two tiny cases
BENCH_ENV = {"ATTNBENCH_BENCH_SET": "mechanisms=[softmax_sdpa,rala_eager];level=op;pass=fwd;resolution=[4];device=cpu"}
FILE_BLOCK = re.compile(r"```(python|yaml)\n# ([\w.-]+\.(?:py|yaml))\n(.*?)```", re.S)


def readme_commands(text: str) -> list[str]:
    """Commands of the ```bash blocks, continuations joined, comments dropped, alternatives expanded."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.extend(_expand(re.sub(r"^\.venv/bin/python ", "python ", line)))
    return commands


def file_blocks(text: str) -> dict[str, str]:
    """NAME -> contents of the ```python / ```yaml blocks whose first line is `# NAME`."""
    return {m.group(2): f"# {m.group(2)}\n{m.group(3)}" for m in FILE_BLOCK.finditer(text)}


def python_scripts(text: str) -> list[str]:
    """The ```python blocks that are not file blocks: snippets a reader runs as they are."""
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if not re.match(r"# [\w.-]+\.py\n", b)]


def _expand(line: str) -> list[str]:
    optional = re.search(r"\[(--[\w-]+)\]", line)
    if optional:
        return _expand(line.replace(optional.group(0), "", 1).replace("  ", " ").strip()) + _expand(
            line.replace(optional.group(0), optional.group(1), 1)
        )
    choice = re.search(r"(?<=\s)(\w+(?:\|\w+)+)(?=\s|$)", line)
    if choice:
        return [out for alt in choice.group(1).split("|") for out in _expand(line.replace(choice.group(1), alt, 1))]
    return [line]


def attnbench_argv(command: str) -> list[str] | None:
    """The arguments of a plain `python -m attnbench ...` command (no shell syntax beyond quoting: no pipe,
    redirection, variable or glob), which the command server runs; None for any other command (run by the shell)."""
    if not command.startswith("python -m attnbench ") or re.search(r"[|<>;&$`*?~]", command):
        return None
    return shlex.split(command)[3:]


def skip_reason(command: str) -> str | None:
    for pattern, reason in SKIP.items():
        if re.search(pattern, command, flags=re.M):
            return reason
    return None


def test_commands_are_extracted():
    commands = readme_commands(README.read_text())
    assert any(c.startswith("python -m attnbench run suites/smoke.yaml") for c in commands)
    assert "python -m attnbench env" in commands and "python -m attnbench run my_suite.yaml" in commands
    quick = re.search(r"## Quick start\n.*?```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert quick and [ln.split("#")[0].strip() for ln in quick.group(1).strip().splitlines()] == [
        "make setup",
        ".venv/bin/python -m attnbench run suites/smoke.yaml",
    ]
    assert set(file_blocks(README.read_text())) == {"my_mechs.py", "my_suite.yaml"}
    assert len(python_scripts(README.read_text())) == 1  # the Python API example
    docs = {p.name: readme_commands(p.read_text()) for p in documents()[1:]}
    assert "python -m attnbench suite-keys --format md" in docs["suites.md"]
    assert sum(map(len, docs.values())) >= 20, docs
    # the expansions: `md|latex|csv` gives three commands, `[--flag]` two
    assert readme_commands("```bash\npython x --format md|csv [--probe]\n```") == [
        "python x --format md",
        "python x --format csv",
        "python x --format md --probe",
        "python x --format csv --probe",
    ]


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path, request):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("attnbench", "mechanisms", "suites", "tests", "pyproject.toml", "scripts"):
        (work / name).symlink_to(REPO / name)
    (work / "results").mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool, prefix in (("python", ""), ("python3", ""), ("pytest", "-m pytest ")):
        (bindir / tool).write_text(f'#!/bin/sh\nexec {sys.executable} {prefix}"$@"\n')  # this venv's Python
        (bindir / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PYTHONPATH": str(work),
        "COLUMNS": "80",
        "ATTNBENCH_CACHE_DIR": str(tmp_path / "cache"),
        **BENCH_ENV,
    }
    env.pop("TRITON_INTERPRET", None) if shutil.which("nvidia-smi") else None
    for key in [k for k in env if k.startswith("PYTEST_XDIST") or k == "PYTEST_CURRENT_TEST"]:
        env.pop(key)  # under `pytest -n`: pytest-benchmark in a docs command would take itself for an xdist worker
    ran, skipped, durations, failures, plotted = [], [], [], [], False

    server = CommandServer(env, work)
    request.addfinalizer(server.close)

    def execute(command: str, where: str) -> None:
        t0 = time.perf_counter()
        argv = attnbench_argv(command)
        if argv is None:
            proc = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300)
            code, out = proc.returncode, proc.stdout + proc.stderr
        else:
            code, out = server.run(argv, work, timeout=300)
        durations.append((round(time.perf_counter() - t0, 1), f"{where}: {command[:90]}"))
        ok = (0, 1) if re.search(VERDICTS, command) else (0,)
        if code not in ok or "Traceback" in out:
            failures.append(f"{where}: exit {code}: {command}\n{out[-3000:]}")
        ran.append(command)

    for doc in documents():
        where = str(doc.relative_to(REPO))
        text = doc.read_text()
        for name, content in file_blocks(text).items():
            (work / name).write_text(content)
        for command in readme_commands(text):
            reason = skip_reason(command)
            if reason:
                skipped.append((command, reason))
                continue
            for placeholder, path in PLACEHOLDERS.items():
                command = command.replace(placeholder, path)
            if any(re.search(p, command) for p in LONG):
                command += "" if "--dry-run" in command else " --dry-run"
            elif re.search(r"attnbench run \S+\.yaml", command) and TINY not in command and "--dry-run" not in command:
                command += f" {QUICK} --rounds {3 if re.search(GATED, command) else 1}"
            if "--plot" in command:  # expansions of one line (md|latex|csv) write the same plots: once is enough
                if plotted:
                    command = re.sub(r"\s--plot\s+\S+", "", command)
                plotted = True
            if command in ran:  # shown in two documents: once is enough
                continue
            execute(command, where)
            if (
                command.startswith("python -m attnbench run suites/smoke.yaml --out results/smoke.csv")
                and not (work / "results" / "smoke_b.csv").exists()
            ):  # a second run of the same cases, for compare/gate (B.csv, NEW.csv)
                for kind in ("csv", "samples.csv", "env.json", "suite.yaml"):
                    shutil.copy(work / "results" / f"smoke.{kind}", work / "results" / f"smoke_b.{kind}")
        for i, script in enumerate(python_scripts(text)):
            reason = skip_reason(script)
            if reason:
                skipped.append((script, reason))
                continue
            path = tmp_path / f"{doc.stem}-snippet-{i}.py"
            path.write_text(script)
            # as typed into a notebook or `python -i`: __main__ has no file for worker processes to re-import
            execute(f"python -c \"exec(compile(open('{path}').read(), '{path.name}', 'exec'))\"", where)
    timings = "\n".join(f"{d:6.1f} s  {c}" for d, c in durations)
    print(timings)
    assert not failures, "\n\n".join(failures) + f"\n\ntimings:\n{timings}"
    assert len(ran) >= 40, ran
    assert all(re.search(SKIPPABLE, c) for c, _ in skipped), skipped
