"""scripts/rala_splits.py (gpu_check.sh's split-count stage) on CPU: the plan it would time, the one-line
refusal without a GPU, and every launch run once in the Triton interpreter with its CSV written."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "rala_splits.py"
sys.path.insert(0, str(REPO / "scripts"))

import rala_splits  # noqa: E402


def test_dry_run_shows_the_planners_split_for_the_issue_shape(capsys):
    assert rala_splits.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fwd: planner S=4" in out and "timed S: [1, 2, 4, 8, 16]" in out  # B=2 h=16 N=1024 on 132 SMs


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_refuses_without_a_gpu_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU path: the interpreter runs the launches untimed")
def test_every_split_count_launches_in_the_interpreter(tmp_path, capsys):
    out = tmp_path / "splits.csv"
    assert rala_splits.main(["--shape", "1,2,4,8,16", "--splits", "1,2,64", "--dtype", "fp16", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["splits"]) for r in rows] == [1, 2]  # 64 is clamped to the 2 token blocks: not timed twice
    assert sum(r["planner_choice"] == "True" for r in rows) == 1
    traffic = [float(r["state_traffic_fwd"]) for r in rows]
    assert 0 < traffic[0] < traffic[1]  # one more split state per (b, h)


@pytest.mark.parametrize("argv", [["--shape", "1,2,3"], ["--splits", "0"], ["--shape", "a,b,c,d,e"]])
def test_bad_arguments_end_with_one_line(argv):
    with pytest.raises(SystemExit, match="rala_splits: --"):
        rala_splits.main(argv)
