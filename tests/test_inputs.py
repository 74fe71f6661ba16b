"""The classes of user input, each against its rule: slugs, the bounded YAML loader, key ranges, the
row validator on load and write, checkpoint values, env ids that match runs, tables at 80 columns."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attnbench import results
from attnbench.cli import main
from attnbench.errors import AttnbenchError, CheckpointError, ResultsError, SuiteError
from attnbench.suite import load_suite
from attnbench.userinput import YamlInputError, load_yaml, slug

REPO = Path(__file__).resolve().parents[1]
TINY = "name: t\nmechanisms: [softmax_sdpa]\nlevel: op\nresolution: 2\ndim: 8\ndevice: cpu\n"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/abs/path", "abs-path"),
        ("../../x", "x"),
        ("a[/]b", "a-b"),
        ("résumé run", "resume-run"),
        ("", "suite"),
        ("..", "suite"),
        ("x" * 300, "x" * 80),
        ("ok_name-1.2", "ok_name-1.2"),
    ],
)
def test_slug_is_a_plain_file_name(name, expected):
    out = slug(name)
    assert out == expected
    assert "/" not in out and not out.startswith(".") and len(out) <= 80


def test_yaml_loader_bounds():
    with pytest.raises(YamlInputError, match="duplicate key 'a'"):
        load_yaml("a: 1\nb: 2\na: 3\n")
    bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    bomb += [f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 10)]
    with pytest.raises(YamlInputError, match="aliases"):
        load_yaml("\n".join(bomb))
    with pytest.raises(YamlInputError, match="deep"):
        load_yaml("[" * 10_000 + "]" * 10_000)
    with pytest.raises(YamlInputError, match="refers to itself"):
        load_yaml("a: &a [*a]")
    assert load_yaml("base: &b {x: 1}\nuse: *b\n") == {"base": {"x": 1}, "use": {"x": 1}}  # a few aliases are fine


@pytest.mark.parametrize(
    ("extra", "sets", "pattern"),
    [
        ("", ["gpu=5"], "`gpu` must be a mapping"),
        ("", ["memory_limit_gb=.inf"], "finite number"),
        ("", ["memory_limit_gb=.nan"], "finite number"),
        ("", ["batch=1000000000000000000000000000000"], "larger than"),
        ("gpu: {batch: [x]}\n", [], ":7: `batch` must be an integer"),  # checked on a CPU machine too
        ("gpu: {timeout_s: .nan}\n", [], "finite number"),
        ("options: {agent: {agent_num: x}}\n", [], "agent_num` must be an integer"),
        ("options: {performer: {features: 1.5}}\n", [], "features` must be an integer"),
        ("name: dup\n", [], "duplicate key 'name'"),
        ("", ['name="a\\x00b"'], "control characters"),
        ("", ["name=" + "x" * 101], "longer than 100"),
        ("models: [ravlt_t]\noptions: {ravlt_t: {checkpoint: ''}}\n", [], "must be the path of a checkpoint"),
        ("checkpoints: {ravlt_t: {path: /nope.pth}}\n", [], "not found"),
    ],
)
def test_suite_values_checked_by_type_and_range(tmp_path, extra, sets, pattern):
    path = write(tmp_path, TINY + extra)
    with pytest.raises(SuiteError, match=pattern.replace("(", r"\(").replace("[", r"\[")):
        load_suite(path, sets)


def test_suite_only_from_regular_files(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SuiteError, match="not a regular file"):
        load_suite(fifo)
    with pytest.raises(SuiteError, match="is a directory"):
        load_suite(tmp_path)


def _row(**kw) -> dict:
    base = {c: "" for c in results.COLUMNS} | {
        "schema_version": 1,
        "run_id": "r",
        "case_id": "c1",
        "metric": "latency",
        "value": 1.5,
        "stat": "median",
        "status": "ok",
        "source": "measured",
        "batch": 1,
        "height": 4,
        "width": 4,
    }
    return base | kw


def test_rows_validated_on_load_bad_lines_skipped_with_one_warning_each(tmp_path):
    path = tmp_path / "r.csv"
    w = results.ResultsWriter(path)
    w.write_rows([_row(case_id=f"c{i}") for i in range(6)])
    w.close()
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0]
    lines[1] = lines[1].replace(",r,c0,", ',r,"c0,', 1)  # an unbalanced quote: only this line is lost
    lines[2] = lines[2].replace(",1.5,", ",nan,")  # NaN latency
    lines[3] = "3" + lines[3][1:]  # schema_version 3 (no such schema)
    lines.insert(4, header)  # a second header
    lines.insert(5, "1,2,3\n")  # a short row
    data = "".join(lines).encode() + b"1,r,c9,\xff\xfe\n"  # a non-UTF-8 line
    path.write_bytes(data)
    with pytest.warns(UserWarning) as caught:
        df = results.load(path)
    assert sorted(df["case_id"]) == ["c3", "c4", "c5"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 6 and all(str(path) in m and "line" in m for m in messages)
    assert any("not finite" in m for m in messages) and any("schema_version" in m for m in messages)
    assert results.done_case_ids(path) == {"c3", "c4", "c5"}  # --resume reads the same file


def test_write_refuses_what_cannot_be_read_back(tmp_path):
    w = results.ResultsWriter(tmp_path / "w.csv")
    with pytest.raises(ResultsError, match="batch"):
        w.write_rows([_row(batch=10**30)])
    w.write_rows([_row(value=math.nan, status="error", message="line one\nline two")])
    w.close()
    df = results.load(tmp_path / "w.csv")
    assert len(df) == 1 and math.isnan(df["value"].iloc[0]) and df["message"].iloc[0] == "line one line two"


@pytest.mark.parametrize("out", ["x" * 250 + ".csv", "a\x00b.csv", "noext", "sub/"])
def test_out_path_refused_up_front(tmp_path, out):
    with pytest.raises(ResultsError):
        results.check_out_path(tmp_path / out if "\x00" not in out else str(tmp_path) + "/" + out)
    (tmp_path / "r.env.json").mkdir()
    with pytest.raises(ResultsError, match="is a directory"):
        results.check_out_path(tmp_path / "r.csv")


def test_checkpoint_values_checked(tmp_path):
    from attnbench.models.checkpoint import load_checkpoint

    model = torch.nn.Linear(3, 2)
    sd = model.state_dict()
    torch.save({k: torch.full_like(v, math.nan) for k, v in sd.items()}, tmp_path / "nan.pth")
    torch.save({k: v.to(torch.int64) for k, v in sd.items()}, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="non-finite") as nan:
        load_checkpoint(model, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="integer dtype"):
        load_checkpoint(model, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="path is empty"):
        load_checkpoint(model, "")
    assert str(nan.value).startswith("checkpoint ")  # no class name in front


def test_gate_refuses_non_finite_benchmark_data(tmp_path):
    from attnbench.gate import gate

    for i, data in enumerate(("[1e999999]", "[0.001, NaN]")):
        doc = f'{{"benchmarks": [{{"name": "a", "stats": {{"data": {data}}}}}]}}'
        (tmp_path / f"a{i}.json").write_text(doc)
        with pytest.raises(AttnbenchError):
            gate(tmp_path / f"a{i}.json", tmp_path / f"a{i}.json")


@pytest.mark.slow
def test_env_id_and_peaks_match_what_runs_record(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "ATTNBENCH_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    probe = subprocess.run(
        [sys.executable, "-m", "attnbench", "env", "--device", "cpu", "--probe", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    shown = json.loads(probe.stdout[: probe.stdout.index("\n}") + 2])
    env_id = shown["env_id"]
    # the thread count `env` shows (torch's default), set explicitly: `threads: auto` would take fewer when other
    # work holds a core, and the thread count is part of env_id
    suite = write(
        tmp_path,
        TINY
        + "metrics: [latency, flops]\nwarmup: 0\nwarmup_s: 0\nrepeats: {min: 3, max: 3, min_time_s: 0}\nrounds: 2\n"
        f"threads: {shown['torch_threads']}\n",
    )  # fresh workers record the env_id, as in any run with rounds
    argv = [sys.executable, "-m", "attnbench", "run", str(suite), "--out", str(tmp_path / "r.csv"), "--no-progress"]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    df = results.load(tmp_path / "r.csv")
    assert set(df["env_id"]) == {env_id}
    assert {"frac_flops", "frac_bandwidth"} & set(df["metric"])


@pytest.mark.slow
def test_tables_keep_numbers_whole_at_80_columns(tmp_path):
    csv = REPO / "results" / "resolution-cpu-20261207.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    for args in (["report", str(csv)], ["compare", str(csv), str(csv)], ["list"]):
        proc = subprocess.run(
            [sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), max(lines, key=len)
        assert "…" not in proc.stdout  # no number (or name) cut with an ellipsis


def test_markup_in_names_is_text(tmp_path, capsys):
    path = write(tmp_path, TINY.replace("name: t", 'name: "a[/]b [bold]x"') + "metrics: [flops]\n")
    assert main(["run", str(path), "--dry-run", "--no-progress", "--out", str(tmp_path / "o.csv")]) == 0
    assert "a[/]b [bold]x" in capsys.readouterr().out
