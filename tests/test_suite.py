"""Suite parsing: shipped suites load; malformed ones stop with `file:line: message`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from attnbench.errors import SuiteError
from attnbench.plan import plan
from attnbench.suite import load_suite

SUITES = Path(__file__).resolve().parents[1] / "suites"

BASE = """\
name: t
mechanisms: [softmax_eager, rala_eager]
level: [op, mixer]
dim: 64
heads: 1
resolution: [7, 14]
batch: 1
dtype: fp32
pass: fwd
device: cpu
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_load(path):
    suite = load_suite(path, ["device=cpu"])
    assert suite.name and suite.mechanisms
    cases = plan(suite)
    assert cases, f"{path.name} plans no case"


def test_scalars_become_sweeps_and_grid_adds(tmp_path):
    suite = load_suite(write(tmp_path, BASE + "grid: [[16, 24]]\n"))
    assert suite.dim == (64,) and suite.batch == (1,) and suite.pass_ == ("fwd",)
    assert suite.grids == ((7, 7), (14, 14), (16, 24))
    assert len(plan(suite)) == 2 * 2 * 3


def test_gpu_block_merges_only_on_cuda_and_set_wins(tmp_path):
    path = write(tmp_path, BASE + "gpu: {batch: [8, 16], dtype: [bf16]}\n")
    cpu = load_suite(path)
    assert cpu.batch == (1,) and cpu.dtype == ("fp32",)
    over = load_suite(path, ["batch=[2, 4]", "repeats.min=2", "verify=false"])
    assert over.batch == (2, 4) and over.repeats.min == 2 and over.verify is False
    assert "batch:\n- 2\n- 4" in over.to_yaml()


def test_family_expansion(tmp_path):
    suite = load_suite(write(tmp_path, BASE.replace("[softmax_eager, rala_eager]", "[family:softmax]")))
    mechs = {c.mechanism for c in plan(suite)}
    assert {"softmax_eager", "softmax_sdpa"} <= mechs and "rala_eager" not in mechs


def test_unavailable_becomes_skip_not_error(tmp_path):
    suite = load_suite(write(tmp_path, BASE.replace("[softmax_eager, rala_eager]", "[softmax_flash]")))
    cases = plan(suite)
    assert cases and all(c.skip and "flash_attn" in c.skip for c in cases)


MALFORMED = [
    ("unknown key", BASE + "repeets: 3\n", r":11: unknown key `repeets`"),
    ("bad yaml", BASE + "batch: [1, 2\n", r":\d+: malformed YAML"),
    ("not a mapping", "- a\n- b\n", r":1: a suite must be a YAML mapping"),
    ("missing name", BASE.replace("name: t\n", ""), r":1: missing required key `name`"),
    (
        "unknown mechanism",
        BASE.replace("rala_eager]", "rala_eagre]"),
        r":2: unknown mechanism 'rala_eagre'; did you mean rala_eager",
    ),
    ("empty sweep", BASE.replace("batch: 1", "batch: []"), r":7: `batch` is an empty sweep"),
    ("wrong type", BASE.replace("dim: 64", "dim: sixty"), r":4: `dim` must be an integer or a list"),
    ("bad dtype", BASE.replace("dtype: fp32", "dtype: fp8"), r":8: `dtype` value 'fp8' is not one of"),
    ("bad level", BASE.replace("level: [op, mixer]", "level: [op, kernel]"), r":3: `level` value 'kernel'"),
    ("negative batch", BASE.replace("batch: 1", "batch: [1, -2]"), r":7: `batch` values must be positive"),
    ("bad repeats", BASE + "repeats: {min: 5, max: 2}\n", r":11: `repeats` needs 1 <= min <= max"),
    ("negative warmup_s", BASE + "warmup_s: -0.5\n", r":11: `warmup_s` must be >= 0 seconds"),
    ("unknown repeats key", BASE + "repeats: {mean: 5}\n", r":11: unknown key `repeats.mean`"),
    ("bad grid", BASE + "grid: [[16, 24, 3]]\n", r":11: `grid` must be \[H, W\]"),
    ("bad device", BASE.replace("device: cpu", "device: tpu"), r":10: `device` must be one of"),
    ("model without models", BASE.replace("level: [op, mixer]", "level: model"), r":3: `level: model` needs `models:`"),
    ("bad gpu key", BASE + "gpu: {bach: [2]}\n", r":11: unknown or unmergeable key `bach`"),
    ("missing plugin", BASE + "plugins: [./nope.py]\n", r":11: plugin file '/\S+/nope.py' not found"),
    ("bad options", BASE + "options: {rala_eager: 3}\n", r":11: `options.rala_eager` must be a mapping"),
]


@pytest.mark.parametrize("text,pattern", [(t, p) for _, t, p in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_suites(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError, match=f"^{path}{pattern}" if pattern.startswith(":") else pattern):
        load_suite(path)


def test_set_errors_name_the_override(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(SuiteError, match="^--set: `batch` must be an integer"):
        load_suite(path, ["batch=big"])
    with pytest.raises(SuiteError, match="expected key=value"):
        load_suite(path, ["batch"])
    with pytest.raises(SuiteError, match="^--set: unknown key `bogus`"):
        load_suite(path, ["bogus=1"])


def test_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_gpu_block_merges_deeply_and_set_can_edit_it(tmp_path):
    path = write(tmp_path, BASE + "repeats: {min: 2, max: 9}\ngpu: {repeats: {min: 4}, batch: [8]}\n")
    cuda = load_suite(path, ["device=cuda"])  # resolving needs no GPU: only `auto` probes for one
    assert (cuda.repeats.min, cuda.repeats.max) == (4, 9) and cuda.batch == (8,)
    assert load_suite(path, ["device=cuda", "gpu.batch=[5]"]).batch == (5,)
    assert load_suite(path, ["device=cpu", "gpu.batch=[5]"]).batch == (1,)


def test_options_are_checked_and_keep_their_types(tmp_path):
    path = write(
        tmp_path,
        BASE.replace("[softmax_eager, rala_eager]", "[performer, rala_eager]")
        + "options: {performer: {features: 64, seed: 3}, rala_eager: {lepe: false}}\n",
    )
    cases = plan(load_suite(path))
    perf = next(c for c in cases if c.mechanism == "performer")
    assert perf.options_dict == {"features": 64, "seed": 3}
    with pytest.raises(SuiteError, match=r":11: rala_eager takes no option\(s\) \['features'\]"):
        load_suite(write(tmp_path, BASE + "options: {rala_eager: {features: 8}}\n"))


def test_defaults_and_key_reference_come_from_the_dataclass(tmp_path):
    """A key left out takes the Suite field's default (docs/design.md, "Suites and plans"); docs/suites.md's key table
    and the generated reference name exactly the schema's keys."""
    import re

    from attnbench.suite_schema import key_reference, kinds

    suite = load_suite(write(tmp_path, "name: t\nmechanisms: [softmax_eager]\nresolution: 7\ndevice: cpu\n"))
    assert (suite.level, suite.dim, suite.heads, suite.batch, suite.dtype, suite.pass_) == (
        ("op",),
        (64,),
        (1,),
        (1,),
        ("fp32",),
        ("fwd",),
    )
    assert (suite.warmup, suite.timeout_s, suite.verify, suite.isolation, suite.rounds) == (3, 120.0, True, "auto", 5)
    assert (suite.repeats.min, suite.repeats.max, suite.repeats.min_time_s) == (5, 100, 0.5)
    rows = {r["key"]: r for r in key_reference()}
    assert set(kinds()) | {"repeats.min", "repeats.max", "repeats.min_time_s", "repeats.target_ci"} == set(rows)
    assert (rows["dtype"]["type"], rows["dtype"]["default"], rows["dtype"]["allowed"]) == (
        "string(s)",
        "[fp32]",
        "fp32 | fp16 | bf16",
    )
    assert (rows["device"]["default"], rows["threads"]["type"], rows["name"]["default"]) == (
        "auto",
        "integer or auto",
        "(required)",
    )
    docs = (Path(__file__).resolve().parents[1] / "docs" / "suites.md").read_text()
    block = docs.split("generated by scripts/make_docs.py: suite-keys", 1)[1].split("end generated", 1)[0]
    listed = set(re.findall(r"^\| ([\w.]+) \|", block, flags=re.M)) - {"key"}
    assert {key for key in listed if "." not in key} == set(kinds())


def test_allowed_values_and_bounds_come_from_the_schema(tmp_path):
    with pytest.raises(SuiteError, match=r":11: `isolation` value 'threads' is not one of auto, inprocess, process"):
        load_suite(write(tmp_path, BASE + "isolation: threads\n"))
    with pytest.raises(SuiteError, match=r":11: `repeats.target_ci` value 2 is larger than 1"):
        load_suite(write(tmp_path, BASE + "repeats: {target_ci: 2}\n"))
    with pytest.raises(SuiteError, match=r":4: `dim` value 70000 is larger than 65536"):
        load_suite(write(tmp_path, BASE.replace("dim: 64", "dim: 70000")))
