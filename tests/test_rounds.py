"""Rounds: every timed case measured in several rounds (fresh workers, shuffled order), samples tagged with
their round, latency rows over round medians; one row per (case_id, metric, stat, source) in every file;
every shipped suite, shrunk to smoke size, writes unambiguous rows; interleaved A/B on two trees."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from attnbench import results, rounds
from attnbench.cli import main
from attnbench.errors import ResultsError
from attnbench.plan import plan
from attnbench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
SUITES = sorted((REPO / "suites").glob("*.yaml"))


def write_suite(tmp_path: Path, body: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


TINY = """\
    name: tiny
    mechanisms: [softmax_sdpa, softmax_eager]
    level: op
    dim: 16
    resolution: [3, 4]
    batch: [1, 2]
    device: cpu
    warmup: 0
    warmup_s: 0
    verify: false
    metrics: [latency]
    repeats: {min: 3, max: 3, min_time_s: 0}
    """


def test_rounds_in_fresh_workers_with_round_medians(tmp_path):
    suite = write_suite(tmp_path, TINY.rstrip(" ") + "    rounds: 3\n    order_seed: 7\n")
    out = tmp_path / "r.csv"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    samples = results.load_samples(out)
    assert list(samples.columns) == results.SAMPLE_COLUMNS
    samples = samples[samples.metric == "latency"]  # beside them: preempted flags and retries per visit
    per_case = samples.groupby("case_id")["round"].agg(lambda r: sorted(set(r)))
    assert len(per_case) == 8 and all(r == [0, 1, 2] for r in per_case)
    df = results.load(out)
    for case_id, rows in df[df.metric == "latency"].groupby("case_id"):
        stat = dict(zip(rows.stat, rows.value))
        s = samples[samples.case_id == case_id]
        meds = [statistics.median(g["value"]) for _, g in s.groupby("round")]
        assert stat["median"] == pytest.approx(statistics.median(meds))
        assert stat["min"] == pytest.approx(min(meds)) and stat["n"] == 3
        # a loaded machine may add its `contended` part (attnbench.contention), which is not asserted here
        assert {n.split("; contended")[0] for n in rows.note} == {"over 3 round medians"}
    recorded = yaml.safe_load(results.companion(out, "suite.yaml").read_text())
    assert recorded["rounds"] == 3 and recorded["order_seed"] == 7


def test_round_order_is_seeded_and_keeps_batch_ladders(tmp_path):
    cases = plan(load_suite(write_suite(tmp_path, TINY)))
    units = rounds.units(cases)
    assert [len(u) for u in units] == [2, 2, 2, 2]  # batch 1, 2 of each (mechanism, grid)
    orders = [[c.case_id for c in rounds.round_order(units, r, 0, 5)] for r in range(5)]
    assert orders[0] == [c.case_id for c in rounds.round_order(units, 0, 0, 5)]  # seeded: reproducible
    assert len({tuple(o) for o in orders}) > 1  # shuffled between rounds
    for order in orders:
        by_id = {c.case_id: c for c in cases}
        batches = [by_id[i].batch for i in order]
        assert batches == [1, 2] * 4  # every ladder stays together and ascending
    assert [c.case_id for c in rounds.round_order(units, 0, 0, 1)] == [c.case_id for c in cases]


def test_latency_summary_over_round_medians():
    history = rounds.History(([[1.0, 2.0, 3.0]], [[10.0, 11.0]]))
    stats, note = rounds.latency_summary([5.0, 6.0, 7.0], history)
    assert (
        stats["median"] == 6.0
        and stats["n"] == 3
        and stats["min"] == 2.0
        and stats["mean"] == pytest.approx((2 + 10.5 + 6) / 3)
    )
    assert note == "over 3 round medians"
    single, note = rounds.latency_summary([1.0, 2.0, 3.0, 10.0])
    assert single["median"] == 2.5 and single["n"] == 4 and note == ""


def test_round_value_is_the_fastest_sweep_median():
    assert rounds.round_value([[3.0, 1.0, 2.0]]) == 2.0  # one sweep: its median
    assert rounds.round_value([[5.0, 6.0, 7.0], [2.0, 3.0], [4.0, 4.0, 9.0]]) == 2.5  # slow sweeps do not count
    with pytest.raises(ValueError):
        rounds.round_value([[]])
    # a round of three sweeps (two earlier, this one), after one earlier round of two sweeps
    history = rounds.History(([[9.0, 9.0], [3.0, 3.0]],), ([8.0], [5.0, 7.0]))
    stats, note = rounds.latency_summary([4.0, 4.0], history)
    assert stats["n"] == 2 and stats["min"] == 3.0 and stats["median"] == pytest.approx(3.5)
    assert note == "over 2 round values (each the fastest of 3 sweep medians)"
    one, note = rounds.latency_summary([4.0], rounds.History((), ([1.0], [2.0, 3.0])))
    assert one["n"] == 4 and one["median"] == 2.5 and note == "one round of 3 sweeps"  # one round: raw repeats
    assert rounds.History().then([1.0]).then([2.0]).sweeps == ([1.0], [2.0])


def test_sweep_policy_shares_the_round_budget():
    from attnbench.measure.timing import RepeatPolicy

    policy = RepeatPolicy(min=10, max=50, min_time_s=0.1)
    assert rounds.sweep_policy(policy, 1) is policy
    share = rounds.sweep_policy(policy, 4)
    assert (share.min, share.max, share.min_time_s) == (3, 13, pytest.approx(0.025))
    tiny = rounds.sweep_policy(RepeatPolicy(min=1, max=1, min_time_s=0), 8)
    assert (tiny.min, tiny.max) == (1, 1)


def test_each_sweep_has_its_own_seeded_order(tmp_path):
    units = [[object()] for _ in range(12)]
    orders = [rounds.unit_order(len(units), 0, 3, 1, sweep, 4) for sweep in range(4)]
    assert len({tuple(o) for o in orders}) == 4 and all(sorted(o) == list(range(12)) for o in orders)
    assert orders[0] == rounds.unit_order(12, 0, 3, 5)  # sweep 0 keeps the round's own order
    assert orders[2] == rounds.unit_order(12, 0, 3, 1, 2, 4)  # reproducible
    assert rounds.unit_order(12, 0, 3, 1) == list(range(12))  # one round, one sweep: the plan's order


def test_sweeps_spread_a_round_and_resume_by_whole_rounds(tmp_path):
    """Each visit times its share; samples carry (round, sweep); rows are over round values (fastest sweep);
    a resumed run keeps complete rounds and measures a partly measured round again."""
    suite = write_suite(tmp_path, TINY.rstrip(" ") + "    rounds: 2\n    sweeps: 3\n")
    out = tmp_path / "s.csv"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    samples = results.load_samples(out)
    assert list(samples.columns) == results.SAMPLE_COLUMNS
    samples = samples[samples.metric == "latency"]  # beside them: preempted flags and retries per visit
    visits = samples.groupby(["case_id", "round", "sweep"])["rep"].count()
    assert len(visits) == 8 * 2 * 3 and set(visits) == {1}  # repeats {min 3, max 3} shared by 3 sweeps
    df = results.load(out)
    for case_id, rows in df[df.metric == "latency"].groupby("case_id"):
        stat = dict(zip(rows.stat, rows.value))
        s = samples[samples.case_id == case_id]
        values = [min(g.groupby("sweep")["value"].median()) for _, g in s.groupby("round")]
        assert stat["n"] == 2 and stat["min"] == pytest.approx(min(values))
        notes = {n.split("; contended")[0] for n in rows.note}  # a loaded machine may add its `contended` part
        assert notes == {"over 2 round values (each the fastest of 3 sweep medians)"}
    from attnbench import stats

    medians = stats.round_medians(samples)
    assert all(len(v) == 2 for v in medians.values())
    # the same file, cut after round 0 plus one sweep of round 1: that round is measured again on resume
    lines = results.companion(out, "samples.csv").read_text().splitlines()
    keep = [ln for ln in lines[1:] if ln.split(",")[2] == "0" or ln.split(",")[3] == "0"]
    results.companion(out, "samples.csv").write_text("\n".join([lines[0], *keep]) + "\n")
    out.write_text(out.read_text().splitlines()[0] + "\n")
    prior = rounds.prior_from_samples(out, 3)
    assert len(prior) == 8 and all(set(by) == {0} and len(by[0]) == 3 for by in prior.values())
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--resume"]) == 0
    again = stats.round_medians(results.load_samples(out))
    assert all(len(v) == 2 for v in again.values()) and len(results.load(out)[lambda d: d.metric == "latency"])


def test_samples_without_round_or_sweep_columns_load(tmp_path):
    old = tmp_path / "old.samples.csv"
    old.write_text("case_id,metric,round,rep,value\nc,latency,0,0,1.5\nc,latency,1,0,2.5\n")
    df = results.load_samples(old)
    assert list(df.columns) == results.SAMPLE_COLUMNS and set(df["sweep"]) == {0}
    older = tmp_path / "older.samples.csv"
    older.write_text("case_id,metric,rep,value\nc,latency,0,1.5\n")
    assert list(results.load_samples(older).columns) == results.SAMPLE_COLUMNS


def test_writer_refuses_a_second_row_with_the_same_key(tmp_path):
    writer = results.ResultsWriter(tmp_path / "d.csv")
    row = {
        "schema_version": results.SCHEMA_VERSION,
        "run_id": "r",
        "case_id": "c",
        "metric": "rel_err",
        "stat": "value",
        "status": "ok",
        "source": "measured",
        "value": 1e-7,
    }
    writer.write_rows([row, row | {"metric": "grad_rel_err"}])
    with pytest.raises(ResultsError, match="duplicate row"):
        writer.write_rows([row | {"note": "grads"}])  # differs only in the note: refused
    with pytest.raises(ResultsError, match="duplicate row"):
        writer.write_rows([row | {"case_id": "e"}, row | {"case_id": "e"}])  # within one batch too
    writer.write_rows([row | {"source": "reported"}])  # a paper's figure beside the measurement is its own key
    writer.close()
    again = results.ResultsWriter(tmp_path / "d.csv")  # a resumed run knows the rows already in the file
    with pytest.raises(ResultsError, match="duplicate row"):
        again.write_rows([row])
    again.close()


def _smoke_sized(path: Path) -> list[str]:
    """--set overrides that shrink a shipped suite to seconds on 2 CPU cores, keeping its mechanisms and metrics."""
    raw = yaml.safe_load(path.read_text())
    sets = [
        "device=cpu",
        "batch=[1]",
        "warmup=0",
        "warmup_s=0",
        "repeats={min: 1, max: 2, min_time_s: 0}",
        "rounds=2",
        "isolation=inprocess",
        "timeout_s=60",
    ]
    levels = raw.get("level", "op")
    if "model" in (levels if isinstance(levels, list) else [levels]):
        sets += ["resolution=[64]", "models=[ravlt_t]"]
    else:
        sets += ["resolution=[4]", "dim=16", "heads=1", "pass=[fwd, fwd_bwd]"]
    if "options" in raw:
        sets.append("options={}")
    return sets


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES, ids=[s.stem for s in SUITES])
def test_every_shipped_suite_writes_one_row_per_key(tmp_path, suite):
    out = tmp_path / f"{suite.stem}.csv"
    argv = ["run", str(suite), "--out", str(out), "--no-progress"]
    for assignment in _smoke_sized(suite):
        argv += ["--set", assignment]
    assert main(argv) == 0
    df = results.load(out, dedupe=False)
    assert len(df) and not df.duplicated(list(results.ROW_KEY)).any()
    verified = df[(df.metric == "rel_err") & (df["pass"] == "fwd_bwd")]
    if len(verified):  # gradients have their own metric
        grads = df[df.metric == "grad_rel_err"]
        assert set(grads.case_id) == set(verified.case_id)


def _copy_tree(dst: Path) -> Path:
    for part in ("attnbench", "mechanisms"):
        shutil.copytree(REPO / part, dst / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.slow
def test_ab_runs_each_side_in_its_own_tree(tmp_path, capsys):
    """Two checkout folders; B's mechanisms are broken, so only B fails: with one line, after A's first round,
    which is kept. (Interleaving, file names and the verdict: test_ab_checks_out_a_git_revision.)"""
    suite = write_suite(
        tmp_path,
        TINY.replace("softmax_sdpa, softmax_eager", "softmax_sdpa")
        .replace("resolution: [3, 4]", "resolution: [4]")
        .replace("batch: [1, 2]", "batch: 1"),
    )
    a, b = _copy_tree(tmp_path / "A"), _copy_tree(tmp_path / "B")
    (b / "mechanisms" / "__init__.py").write_text("raise ImportError('tree B is broken on purpose')\n")
    out = tmp_path / "ab"
    assert (
        main(["ab", str(suite), "--baseline", str(a), "--candidate", str(b), "--rounds", "3", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "side B" in err and "round 1 failed" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.glob("*.csv")) == ["A-r01.csv", "A-r01.samples.csv"]  # A's round is kept


@pytest.mark.slow
def test_ab_checks_out_a_git_revision(tmp_path, capsys, monkeypatch):
    if (
        shutil.which("git") is None
        or subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0
    ):
        pytest.skip("needs a git checkout")
    suite = write_suite(
        tmp_path,
        TINY.replace("softmax_sdpa, softmax_eager", "softmax_sdpa")
        .replace("resolution: [3, 4]", "resolution: [4]")
        .replace("batch: [1, 2]", "batch: 1"),
    )
    scratch = tmp_path / "tmp"  # this test's temporary worktrees only (others may run ab beside it under -n)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def ours() -> list[str]:
        listed = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        return [ln for ln in listed.stdout.splitlines() if ln.startswith("worktree ") and str(scratch) in ln]

    out = tmp_path / "ab"
    code = main(["ab", str(suite), "--baseline", "HEAD", "--rounds", "3", "--out", str(out)])
    assert code in (0, 1)  # a verdict either way (HEAD and this checkout: the same code where it is clean)
    shown = capsys.readouterr().out
    assert "temporary worktree" in shown and str(scratch) in shown.replace("\n", "")  # made where we look
    assert ours() == [] and not any(scratch.iterdir())  # removed again
    assert "A B B A A B" in shown and "3/3" in shown  # 3/3: rounds per side
    # a verdict, unless a loaded machine left the one case contended (then it is unsteady and not judged)
    assert "NO VERDICT" not in shown or "1 unsteady" in shown
    files = sorted(out.glob("*.csv"), key=lambda p: p.stat().st_mtime)
    names = [p.name for p in files if not p.name.endswith(".samples.csv")]
    assert names == ["A-r01.csv", "B-r01.csv", "B-r02.csv", "A-r02.csv", "A-r03.csv", "B-r03.csv"]
    assert main(["ab", str(suite), "--baseline", "no-such-revision-xyz"]) == 2
    assert "neither a directory nor a git revision" in capsys.readouterr().err


def test_gate_cli_sides(tmp_path):
    from attnbench.cli import build_parser
    from attnbench.cli_commands import gate_sides

    parse = build_parser().parse_args
    assert gate_sides(parse(["gate", "a.csv", "b.csv"])) == (["a.csv"], ["b.csv"])
    assert gate_sides(parse(["gate", "a1", "a2", "--new", "b1", "b2"])) == (["a1", "a2"], ["b1", "b2"])
    assert gate_sides(parse(["gate", "--baseline", "a1", "--new", "b1"])) == (["a1"], ["b1"])
    assert main(["gate", "a", "b", "c"]) == 2


def test_rounds_key_is_validated(tmp_path, capsys):
    suite = write_suite(tmp_path, TINY)
    for bad in ("rounds=0", "rounds=x", "order_seed=-1"):
        assert main(["run", str(suite), "--out", str(tmp_path / "x.csv"), "--set", bad]) == 2
        assert capsys.readouterr().err.count("attnbench: error:") == 1
    assert load_suite(suite).rounds == 5  # the default
    assert load_suite(suite, ["rounds=2"]).rounds == 2
