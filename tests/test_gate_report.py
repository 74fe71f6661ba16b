"""Gate output for CI: `--format json` validates against docs/gate.schema.json and carries the result's
numbers, `--format md` matches a reviewed snapshot, `ab --format` keeps stdout for the result, and the GitHub
Actions workflow in docs/ci.md is valid YAML that runs `ab` and posts the Markdown."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_gate import write_run as write_rounds  # the results writer of the gate tests (rounds of repeats)

from attnbench import gate_report
from attnbench.cli import main
from attnbench.gate import gate_rounds

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "fixtures" / "gate" / "summary.md"
SCHEMA = json.loads((REPO / "docs" / "gate.schema.json").read_text())
BASE = np.array([1.00, 1.02, 0.98, 1.01, 0.99, 1.00])


def validate(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")  # in the `test` extra; skipped only where it is missing
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


def write_run(path: Path, rounds: dict[str, np.ndarray]) -> Path:
    """A results CSV with FILE.samples.csv: per case one row, per round three repeats around the round's value."""
    return write_rounds(
        path, {case_id: [lvl * np.array([0.999, 1.0, 1.001]) for lvl in levels] for case_id, levels in rounds.items()}
    )


def snapshot_result():
    """Every status once: c0 30% slower, c1 30% faster, c2 unchanged, c3 two rounds, c4 contended."""
    jitter = np.array([1.0, 1.01, 0.99, 1.0, 1.005, 0.995])
    base = {"c0": BASE, "c1": BASE, "c2": BASE, "c3": BASE[:2], "c4": BASE}
    new = {"c0": 1.3 * BASE * jitter, "c1": 0.7 * BASE, "c2": BASE * jitter, "c3": BASE[:2], "c4": 2 * BASE}
    names = {k: f"mech{k[1]} op fwd fp32 b1 14x14" for k in base} | {"c0": "a|b op", "c2": "hidden op"}
    return gate_rounds(base, new, names=names, unit="ms", unsteady={"c4"})


def test_markdown_summary_matches_the_snapshot():
    text = gate_report.to_markdown(snapshot_result())
    assert text == SNAPSHOT.read_text()


def test_markdown_lists_what_matters_and_counts_the_rest():
    text = gate_report.to_markdown(snapshot_result())
    table = [line for line in text.splitlines() if line.startswith("| ") and "status" not in line]
    assert [row.split(" | ")[0] for row in table] == ["| regression", "| improvement", "| unsteady", "| too few rounds"]
    assert "1 unchanged case not listed." in text and text.startswith("### attnbench gate: FAIL")
    assert "| a\\|b op |" in text and "hidden" not in text  # a pipe escaped; the unchanged case not shown


def test_gate_json_validates_and_carries_the_numbers(tmp_path, capsys):
    a = write_run(tmp_path / "a.csv", {"c0": BASE, "c1": BASE * 2, "c2": BASE[:2]})
    b = write_run(tmp_path / "b.csv", {"c0": BASE * 1.3, "c1": BASE * 2 * np.roll(BASE, 1), "c2": BASE[:2]})
    assert main(["gate", str(a), str(b), "--format", "json", "--threshold", "10%"]) == 1
    doc = json.loads(capsys.readouterr().out)
    validate(doc)
    assert doc["verdict"] == "fail" and doc["exit_code"] == 1 and doc["metric"] == "latency"
    assert doc["options"] == {
        "threshold": 0.1,
        "alpha": 0.05,
        "min_rounds": 3,
        "absolute": False,
        "across_hardware": False,
    }
    assert doc["run_shift"] == {"change": 0.0, "removed": False, "cases": 2}
    c0, c1, c2 = doc["cases"]
    assert c0["status"] == "regression" and math.isclose(c0["effect"], 0.3) and math.isclose(c0["ratio"], 1.3)
    assert c0["effect_interval"][0] < 0.3 < c0["effect_interval"][1] and c0["p_holm"] <= 0.05
    assert math.isclose(c0["noise"], float(np.log(BASE).std(ddof=1)))  # a 1.3x copy: the same spread
    assert c1["status"] == "unchanged" and c0["name"] == "mech0 op fwd fp32 b1 14x14"
    assert c2["status"] == "too_few_rounds" and c2["p"] is None and c2["effect_interval"] is None
    assert doc["counts"] == {"regression": 1, "improvement": 0, "unsteady": 0, "too_few_rounds": 1, "unchanged": 1}


def test_gate_json_without_a_verdict_validates_and_exits_0(tmp_path, capsys):
    a = write_run(tmp_path / "a.csv", {"c0": BASE[:2]})
    b = write_run(tmp_path / "b.csv", {"c0": BASE[:2] * 1.5})
    assert main(["gate", str(a), str(b), "--format", "json"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    validate(doc)
    assert doc["verdict"] == "no_verdict" and "nothing was decided" in out.err


def test_gate_md_on_the_command_line(tmp_path, capsys):
    a = write_run(tmp_path / "a.csv", {"c0": BASE})
    b = write_run(tmp_path / "b.csv", {"c0": BASE * 0.5})
    assert main(["gate", str(a), str(b), "--format", "md"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("### attnbench gate: PASS") and "| improvement | mech0 op fwd fp32 b1 14x14 |" in text


def test_ab_json_keeps_stdout_for_the_result(tmp_path, capsys, monkeypatch):
    from attnbench import ab

    files = {
        "A": [write_run(tmp_path / f"A-r{i}.csv", {"c0": BASE[i : i + 1]}) for i in range(3)],
        "B": [write_run(tmp_path / f"B-r{i}.csv", {"c0": BASE[i : i + 1] * 1.5}) for i in range(3)],
    }
    plan = ab.Plan(suite=tmp_path / "s.yaml", sides={s: ab.Side(s, tmp_path) for s in "AB"}, rounds=3, out_dir=tmp_path)
    monkeypatch.setattr(ab, "prepare", lambda *a, **k: plan)
    monkeypatch.setattr(ab, "execute", lambda plan, log: (log("round 1 of 6: A"), files)[1])
    monkeypatch.setattr(ab, "cleanup", lambda plan: None)
    assert main(["ab", "s.yaml", "--baseline", "HEAD", "--format", "json"]) == 1
    out = capsys.readouterr()
    doc = json.loads(out.out)
    validate(doc)
    assert doc["verdict"] == "fail" and doc["cases"][0]["rounds_new"] == 3
    assert "round 1 of 6: A" in out.err and "A (baseline)" in out.err


def test_github_workflow_in_the_docs_parses_and_posts_the_summary():
    text = (REPO / "docs" / "ci.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    doc = yaml.safe_load(block)
    assert "pull_request" in doc[True]  # YAML 1.1 reads the key `on` as True
    steps = [s for job in doc["jobs"].values() for s in job["steps"]]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "attnbench ab" in runs and "--format md" in runs and "GITHUB_STEP_SUMMARY" in runs
    assert "gh pr comment" in runs and any(s.get("uses", "").startswith("actions/checkout") for s in steps)
