"""Every input answered: >= 1,000 seeded malformed inputs through the CLI (tests/fuzz_cli.py), each exit 0
with valid output or exit 2 with exactly one `attnbench: error:` line; never a traceback, never past its
per-input limit, never a file outside the output folder. Plus a few of the worst inputs end to end in a
subprocess (a real process: nothing in-process could hide a hang or a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fuzzed_inputs_are_all_answered(tmp_path, capsys):
    tallies = fuzz_cli.fuzz(tmp_path / "fz", scale=1.0, seed=17)
    table = fuzz_cli.summary_table(tallies)
    with capsys.disabled():
        print("\n" + table)
    total = sum(t.counts["inputs"] for t in tallies.values())
    assert total >= 1000, table
    failures = [f for t in tallies.values() for f in t.failures]
    shown = "\n".join(f"{f.kind} {f.verdict} {[a[:80] for a in f.argv]}\n{f.detail[-800:]}" for f in failures[:10])
    assert not failures, f"{len(failures)} inputs not answered properly\n{table}\n{shown}"


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


@pytest.mark.parametrize("case", ["fifo", "alias_bomb", "markup_name", "abs_name"])
def test_worst_inputs_end_to_end(tmp_path, case):
    suite = tmp_path / "s.yaml"
    base = "mechanisms: [softmax_eager]\nlevel: op\nresolution: 2\ndim: 8\ndevice: cpu\nmetrics: [flops]\n"
    if case == "fifo":
        os.mkfifo(suite)
    elif case == "alias_bomb":
        lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
        lines += [f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 10)]
        suite.write_text("\n".join(lines) + "\nname: bomb\n" + base)
    elif case == "markup_name":
        suite.write_text('name: "a[/]b [bold]' + "x" * 60 + '"\n' + base)
    else:
        suite.write_text("name: /abs/../../escape\n" + base)
    (tmp_path / "cwd").mkdir()
    proc = _cli("run", str(suite), "--no-progress", cwd=tmp_path / "cwd", timeout=60)
    assert "Traceback" not in proc.stderr + proc.stdout
    if case in ("fifo", "alias_bomb"):
        assert proc.returncode == 2
        assert [line for line in proc.stderr.splitlines() if line.startswith("attnbench: error:")], proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    written = [p for p in (tmp_path / "cwd").rglob("*") if p.is_file()]
    assert written and all(p.parent == tmp_path / "cwd" / "results" for p in written), written
    assert not Path("/abs").exists() and not (tmp_path / "escape").exists()
    if case == "markup_name":
        assert "a[/]b" in proc.stdout
