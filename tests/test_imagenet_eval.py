"""ImageNet evaluation: transform against hand-computed sizes/crop boxes, accuracy against brute force.

Images are generated here (PNG, lossless); the classifier is a tiny seeded model defined below.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

Image = pytest.importorskip("PIL.Image")

from attnbench.errors import AttnbenchError, CheckpointError  # noqa: E402
from attnbench.models import imagenet  # noqa: E402
from attnbench.models.imagenet import (  # noqa: E402
    EvalResult,
    accuracy_rows,
    evaluate,
    sha256_file,
    shard_indices,
    subset_indices,
)
from attnbench.models.imagenet_data import (  # noqa: E402
    DataError,
    EvalTransform,
    default_resize_size,
    load_eval_dataset,
)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
BICUBIC = Image.Resampling.BICUBIC
CROP = 16  # small evaluation crop for the accuracy tests; resize = int(16 / 0.875) = 18


class TinyClassifier(nn.Module):
    """Conv -> ReLU -> global pool -> linear: logits (B, num_classes); seeded, so every process builds the same."""

    def __init__(self, num_classes: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, s, s) -> (B, C)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) -> float32 (3, h, w): ToTensor then Normalize, written out independently."""
    return ((pixels.astype(np.float32) / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)


def _random_image(path: Path, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)  # coarse colour regions
    pixels = np.kron(blocks, np.ones((height // 4 + 1, width // 4 + 1, 1), dtype=np.uint8))[:height, :width]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


CLASS_COUNTS = {"n03": 2, "n01": 3, "n07": 2, "n02": 2, "n05": 2, "n04": 2, "n06": 2}  # 15 images, 7 classes


@pytest.fixture
def val_dir(tmp_path: Path) -> Path:
    """val/<class>/<image>: 7 classes, 15 images (odd: uneven shards), mixed sizes and orientations."""
    root = tmp_path / "val"
    i = 0
    for name, count in CLASS_COUNTS.items():
        for j in range(count):
            w, h = (30 + 3 * i, 22 + 2 * j) if i % 2 else (21 + j, 33 + i)
            _random_image(root / name / f"img_{j}.png", w, h, seed=i)
            i += 1
    return root


def _brute_force(model: nn.Module, val: Path, indices=None) -> tuple[float, float, int]:
    """Top-1/top-5 from one image at a time: label rank = number of logits strictly above the label's."""
    classes = sorted(d.name for d in val.iterdir())
    samples = [(p, c) for c, name in enumerate(classes) for p in sorted((val / name).iterdir())]
    if indices is not None:
        samples = [samples[i] for i in indices]
    transform = EvalTransform(image_size=CROP)
    hits1 = hits5 = 0
    model = model.to(torch.float64).eval()
    for path, label in samples:
        with Image.open(path) as im:
            x = transform(im)[None].to(torch.float64)  # (1, 3, s, s)
        with torch.no_grad():
            logits = model(x)[0].tolist()
        rank = sum(v > logits[label] for v in logits)
        hits1 += rank < 1
        hits5 += rank < min(5, len(logits))
    n = len(samples)
    return 100.0 * hits1 / n, 100.0 * hits5 / n, n


# ---------------------------------------------------------------- transform


def test_default_resize_sizes_by_hand():
    assert default_resize_size(224) == 256  # 224 / 0.875 = 256
    assert default_resize_size(384) == 438  # 438.86
    assert default_resize_size(16) == 18  # 18.29
    assert EvalTransform().protocol == "resize256-bicubic/crop224"


def test_landscape_resize_and_crop(tmp_path):
    # 300x200: red | green | blue thirds. Resize(100): shorter side 200 -> 100, longer int(100 * 300 / 200) = 150.
    # CenterCrop(80) on 150x100: top = round(20 / 2) = 10, left = round(70 / 2) = 35.
    pixels = np.zeros((200, 300, 3), dtype=np.uint8)
    pixels[:, :100, 0] = pixels[:, 100:200, 1] = pixels[:, 200:, 2] = 255
    image = Image.fromarray(pixels, "RGB")
    t = EvalTransform(image_size=80, resize_size=100)
    assert t.resized_size(300, 200) == (150, 100)
    assert t.crop_box(150, 100) == (35, 10, 115, 90)
    out = t(image)
    assert out.shape == (3, 80, 80) and out.dtype == torch.float32
    resized = np.asarray(image.resize((150, 100), BICUBIC))
    expected = _normalise(resized[10:90, 35:115])
    np.testing.assert_array_equal(out.numpy(), expected)
    # PIL-independent placement check: crop x in [35, 115) of 150 = original x in [70, 230): red, green, blue
    rgb = out.numpy() * STD[:, None, None] + MEAN[:, None, None]  # (3, 80, 80) back in [0, 1]
    assert [int(rgb[:, 40, col].argmax()) for col in (0, 40, 79)] == [0, 1, 2]


def test_portrait_crop_rounds_halves_to_even():
    # 200x300 portrait, Resize(100) -> 100x150. CenterCrop(81): top = round(69 / 2 = 34.5) = 34,
    # left = round(19 / 2 = 9.5) = 10 (Python's round, as torchvision's int(round(...))).
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8), "RGB")
    t = EvalTransform(image_size=81, resize_size=100)
    assert t.resized_size(200, 300) == (100, 150)
    assert t.crop_box(100, 150) == (10, 34, 91, 115)
    resized = np.asarray(image.resize((100, 150), BICUBIC))
    np.testing.assert_array_equal(t(image).numpy(), _normalise(resized[34:115, 10:91]))


def test_shorter_side_already_at_size_is_not_resampled():
    # 256x300 with the default 224 protocol: Resize(256) keeps 256x300 (int(256 * 300 / 256) = 300),
    # so the output is a plain slice of the original: top = round(76 / 2) = 38, left = round(32 / 2) = 16.
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (300, 256, 3), dtype=np.uint8)
    out = EvalTransform()(Image.fromarray(pixels, "RGB"))
    assert out.shape == (3, 224, 224)
    np.testing.assert_array_equal(out.numpy(), _normalise(pixels[38:262, 16:240]))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_converts_to_rgb(mode):
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), "RGB")
    image = rgb.convert(mode)
    t = EvalTransform(image_size=16, resize_size=20)  # 20x20 -> no resize; crop (2, 2, 18, 18)
    expected = _normalise(np.asarray(image.convert("RGB"))[2:18, 2:18])
    np.testing.assert_array_equal(t(image).numpy(), expected)


def test_resize_smaller_than_crop_is_an_error():
    with pytest.raises(DataError, match="smaller than the crop"):
        EvalTransform(image_size=224, resize_size=200)


# ---------------------------------------------------------------- layouts


def test_class_folders_sorted_and_filtered(tmp_path):
    root = tmp_path / "val"
    for name in ("zebra", "apple", "mango"):
        _random_image(root / name / "a.png", 8, 8, 0)
    _random_image(root / "mango" / "sub" / "b.JPEG", 8, 8, 1)  # nested, upper-case extension
    (root / "apple" / "notes.txt").write_text("not an image")
    _random_image(root / "apple" / ".hidden.png", 8, 8, 2)
    _random_image(root / ".cache" / "c.png", 8, 8, 3)  # hidden folder: not a class
    ds = load_eval_dataset(root, image_size=4)
    assert ds.classes == ["apple", "mango", "zebra"] and ds.num_classes == 3
    got = [(str(Path(p).relative_to(root)), label) for p, label in ds.samples]
    assert got == [("apple/a.png", 0), ("mango/a.png", 1), ("mango/sub/b.JPEG", 1), ("zebra/a.png", 2)]
    x, y = ds[2]
    assert x.shape == (3, 4, 4) and y == 1


def _flat(tmp_path: Path, names) -> Path:
    root = tmp_path / "flat"
    for i, name in enumerate(names):
        _random_image(root / name, 10, 12, i)
    return root


def test_flat_labels_txt(tmp_path):
    root = _flat(tmp_path, ["a.png", "my image.png", "sub/c.png"])
    (root / "labels.txt").write_text("# filename label\na.png 4\n\nmy image.png\t0\nsub/c.png 2\n")
    ds = load_eval_dataset(root, image_size=8)
    assert [(Path(p).name, y) for p, y in ds.samples] == [("a.png", 4), ("my image.png", 0), ("c.png", 2)]
    assert ds.num_classes is None and ds.max_label == 4


@pytest.mark.parametrize("header", [True, False])
def test_flat_labels_csv_and_direct_file(tmp_path, header):
    root = _flat(tmp_path, ["a.png", "b.png"])
    csv_path = root / "ground_truth.csv"
    csv_path.write_text(("filename,label\n" if header else "") + "b.png,1\na.png,3\n")
    ds = load_eval_dataset(csv_path, image_size=8)  # a labels file given directly
    assert [(Path(p).name, y) for p, y in ds.samples] == [("b.png", 1), ("a.png", 3)]


def _error_cases(tmp_path: Path):
    root = _flat(tmp_path, ["a.png", "b.png"])
    yield "missing", tmp_path / "nope", "not found"
    empty = tmp_path / "empty"
    empty.mkdir()
    yield "empty", empty, "no images found"
    yield "no labels", root, "no labels.txt"
    cases = {
        "one field": ("labels.txt", "a.png\n", "labels.txt:1: expected 'filename label'"),
        "not int": ("labels.txt", "a.png 0\nb.png cat\n", "labels.txt:2: label 'cat' is not a non-negative integer"),
        "negative": ("labels.txt", "a.png -1\n", "not a non-negative integer"),
        "missing image": ("labels.txt", "a.png 0\nc.png 1\n", "image c.png not found"),
        "duplicate": ("labels.txt", "a.png 0\na.png 1\n", "listed twice (first on line 1)"),
        "csv one column": ("labels.csv", "a.png\n", "labels.csv:1: expected 'filename,label'"),
        "nothing listed": ("labels.txt", "# only a comment\n", "lists no images"),
    }
    for name, (file, text, message) in cases.items():
        d = tmp_path / name.replace(" ", "_")
        _flat(d, ["a.png", "b.png"])
        (d / "flat" / file).write_text(text)
        yield name, d / "flat", message
    both = _flat(tmp_path / "both", ["a.png"])
    (both / "labels.txt").write_text("a.png 0\n")
    (both / "labels.csv").write_text("a.png,0\n")
    yield "both", both, "both labels.txt and labels.csv"
    classes = tmp_path / "classes"
    _random_image(classes / "n1" / "a.png", 8, 8, 0)
    (classes / "n2").mkdir()
    yield "empty class", classes, "class folder(s) in"


def test_user_errors_are_one_line(tmp_path):
    seen = 0
    for name, path, message in _error_cases(tmp_path):
        with pytest.raises(AttnbenchError) as info:
            load_eval_dataset(path)
        text = str(info.value)
        assert message in text, (name, text)
        assert "\n" not in text, name
        seen += 1
    assert seen == 12


def test_class_count_mismatch(val_dir):
    with pytest.raises(DataError, match="7 class folders but the model outputs 4 logits"):
        evaluate(TinyClassifier(4), val_dir, image_size=CROP, num_workers=0)


def test_flat_label_out_of_range(tmp_path):
    root = _flat(tmp_path, ["a.png", "b.png"])
    (root / "labels.txt").write_text("a.png 1\nb.png 3\n")
    with pytest.raises(DataError, match="label 3 is out of range for a model with 3 classes"):
        evaluate(TinyClassifier(3), root, image_size=CROP, num_workers=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_is_a_one_line_error(tmp_path, workers):
    root = _flat(tmp_path, ["a.png"])
    (root / "b.png").write_bytes(b"not a png")
    (root / "labels.txt").write_text("a.png 0\nb.png 1\n")
    with pytest.raises(DataError) as info:
        evaluate(TinyClassifier(3), root, image_size=CROP, num_workers=workers, batch_size=1)
    assert str(info.value).startswith(f"cannot read image {root / 'b.png'}") and "\n" not in str(info.value)
    assert not multiprocessing.active_children()  # the loader's workers were shut down, not left idle


# ---------------------------------------------------------------- evaluation


def test_evaluate_matches_brute_force(val_dir):
    model = TinyClassifier(7)
    top1, top5, n = _brute_force(model, val_dir)
    assert n == 15 and 0 < top1 < top5 < 100  # the fixture discriminates
    calls = []
    result = evaluate(
        model,
        val_dir,
        batch_size=4,
        image_size=CROP,
        num_workers=0,
        dtype=torch.float64,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert isinstance(result, EvalResult)
    assert (result.top1, result.top5, result.images, result.num_classes) == (top1, top5, 15, 7)
    assert calls == [(4, 15), (8, 15), (12, 15), (15, 15)]
    assert result.seconds > 0 and result.images_per_s == pytest.approx(15 / result.seconds)


def test_workers_and_prepared_dataset_agree(val_dir):
    model = TinyClassifier(7)
    base = evaluate(model, val_dir, batch_size=4, image_size=CROP, num_workers=0, dtype="fp64")
    with_workers = evaluate(model, val_dir, batch_size=3, image_size=CROP, num_workers=2, dtype="fp64")
    prepared = evaluate(model, load_eval_dataset(val_dir, image_size=CROP), batch_size=16, num_workers=0, dtype="fp64")
    for r in (with_workers, prepared):
        assert (r.top1, r.top5, r.images) == (base.top1, base.top5, base.images)


def test_limit_takes_evenly_spaced_images(val_dir):
    assert subset_indices(15, 5) == [0, 3, 6, 9, 12]
    assert subset_indices(15, 40) == list(range(15))
    model = TinyClassifier(7)
    top1, top5, n = _brute_force(model, val_dir, indices=[0, 3, 6, 9, 12])
    r = evaluate(model, val_dir, image_size=CROP, num_workers=0, dtype=torch.float64, limit=5)
    assert (r.top1, r.top5, r.images) == (top1, top5, n) == (top1, top5, 5)


def test_topk_capped_at_num_classes(tmp_path):
    root = tmp_path / "val3"
    for c in range(3):
        _random_image(root / f"c{c}" / "x.png", 20, 20, c)
    r = evaluate(TinyClassifier(3), root, image_size=CROP, num_workers=0)
    assert r.top5 == 100.0 and r.num_classes == 3  # top-3 of 3 classes always hits


def test_shards_are_disjoint_and_cover():
    indices = subset_indices(15)
    shards = [shard_indices(indices, r, 4) for r in range(4)]
    assert [len(s) for s in shards] == [4, 4, 4, 3]
    assert sorted(i for s in shards for i in s) == indices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_two_ranks_equal_single_process(val_dir, tmp_path):
    model = TinyClassifier(7)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    script = tmp_path / "dist_eval.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_imagenet_eval import TinyClassifier
        from attnbench.models.imagenet import evaluate_distributed
        model = TinyClassifier(7)
        model.load_state_dict(torch.load({str(tmp_path / "tiny.pt")!r}, weights_only=True))
        seen = []  # evaluate_distributed sets up (and tears down) the gloo group from torchrun's environment
        r = evaluate_distributed(model, {str(val_dir)!r}, batch_size=2, image_size={CROP}, num_workers=0,
                                 dtype=torch.float64, progress=lambda done, total: seen.append((done, total)))
        out = dict(vars(r), rank=int(os.environ["RANK"]), world=int(os.environ["WORLD_SIZE"]), shard=seen[-1][1])
        # one file per rank: two ranks printing to one pipe can interleave within a line
        with open(os.path.join({str(tmp_path)!r}, "rank%d.json" % out["rank"]), "w") as fh:
            json.dump(out, fh)
    """)
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["world"] for r in ranks} == {2}
    assert sorted(r["shard"] for r in ranks) == [7, 8]  # uneven shards, no padding
    single = evaluate(model, val_dir, batch_size=4, image_size=CROP, num_workers=0, dtype=torch.float64)
    top1, top5, _ = _brute_force(model, val_dir)
    for r in ranks:
        assert (r["top1"], r["top5"], r["images"], r["num_classes"]) == (single.top1, single.top5, 15, 7)
        assert (r["top1"], r["top5"]) == (top1, top5)


def test_evaluate_distributed_without_torchrun_is_a_user_error(val_dir, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AttnbenchError, match="launch with torchrun"):
        imagenet.evaluate_distributed(TinyClassifier(7), val_dir, image_size=CROP)


# ---------------------------------------------------------------- runner rows, sha256, CLI


def test_sha256_file_streams(tmp_path):
    data = np.random.default_rng(3).bytes(300_001)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=4096) == hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_checkpoint(tmp_path, monkeypatch):
    """A checkpoint file of TinyClassifier(7); load_pretrained is replaced by a loader of it."""
    path = tmp_path / "tiny_ckpt.pt"
    torch.save({"model": TinyClassifier(7).state_dict()}, path)
    loaded = []

    def fake_load(model_name, checkpoint, *, ema=False):
        loaded.append((model_name, Path(checkpoint), ema))
        model = TinyClassifier(7, seed=99)
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        return model.eval()

    monkeypatch.setattr(imagenet, "load_pretrained", fake_load)
    return path, loaded


def test_accuracy_rows(val_dir, tiny_checkpoint):
    path, loaded = tiny_checkpoint
    rows = accuracy_rows(
        "ravlt_t",
        data=str(val_dir),
        checkpoint=str(path),
        ema=False,
        image_size=CROP,
        batch_size=4,
        device="cpu",
        dtype="fp64",
        num_workers=0,
    )
    top1, top5, _ = _brute_force(TinyClassifier(7), val_dir)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    note = f"sha256={digest}..., images=15, ema=false, protocol=resize18-bicubic/crop16"
    assert [(r.metric, r.unit, r.note, r.source) for r in rows] == [
        ("top1", "%", note, "measured"),
        ("top5", "%", note, "measured"),
        ("throughput", "items/s", "eval incl. data loading", "measured"),
    ]
    assert (rows[0].value, rows[1].value) == (top1, top5) and rows[2].value > 0
    assert loaded == [("ravlt_t", path, False)]


def test_accuracy_rows_missing_inputs(val_dir, tiny_checkpoint, tmp_path):
    path, loaded = tiny_checkpoint
    common = dict(ema=False, image_size=CROP, batch_size=4, device="cpu", dtype="fp32", num_workers=0)
    cases = [
        (None, path, DataError, "set `data:` in the suite"),
        (tmp_path / "absent", path, DataError, "not found"),
        (val_dir, None, CheckpointError, "no checkpoint for ravlt_s"),
        (val_dir, tmp_path / "absent.pth", CheckpointError, "checkpoint for ravlt_s not found"),
    ]
    for data, ckpt, error, message in cases:
        with pytest.raises(error) as info:
            accuracy_rows("ravlt_s", data=data, checkpoint=ckpt, **common)
        assert message in str(info.value) and "\n" not in str(info.value)
    assert loaded == []  # nothing heavy was started


def test_main_prints_one_json_line(val_dir, tiny_checkpoint, capsys, monkeypatch):
    path, _ = tiny_checkpoint
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = ["--model", "ravlt_t", "--checkpoint", str(path), "--data", str(val_dir), "--image-size", str(CROP)]
    code = imagenet.main([*args, "--workers", "0", "--device", "cpu", "--dtype", "fp64"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1
    record = json.loads(out[0])
    top1, top5, _ = _brute_force(TinyClassifier(7), val_dir)
    assert (record["top1"], record["top5"], record["images"]) == (top1, top5, 15)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["protocol"] == "resize18-bicubic/crop16"

    code = imagenet.main(["--model", "ravlt_t", "--checkpoint", str(path), "--data", str(val_dir / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.fixture
def one_thread():
    """One intra-op thread: on an oversubscribed machine OpenMP spinning makes 2 threads several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_real_ravlt_checkpoint_roundtrip(tmp_path, one_thread):
    """accuracy_rows end to end with the project's RAVLT and checkpoint loader (random weights, 64 px, EMA key)."""
    ravlt = pytest.importorskip("attnbench.models.ravlt")

    torch.manual_seed(0)
    model = ravlt.create_ravlt("ravlt_t").eval()
    with torch.no_grad():
        model.head.bias[0] += 10.0  # every image ranks class 0 first and class 500 second
        model.head.bias[500] += 5.0
    decoy = {k: v.clone() for k, v in model.state_dict().items()}
    decoy["head.bias"][1] += 100.0  # the non-EMA weights would rank class 1 first for every image
    ckpt = tmp_path / "ravlt_t.pth"
    torch.save({"model": decoy, "model_ema": model.state_dict()}, ckpt)
    root = _flat(tmp_path, ["a.png", "b.png", "c.png"])
    (root / "labels.txt").write_text("a.png 0\nb.png 500\nc.png 999\n")
    transform = EvalTransform(image_size=64)
    x = torch.stack([transform(Image.open(root / n)) for n in ("a.png", "b.png", "c.png")])  # (3, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)  # (3, 1000)
    ranks = [int((logits[i] > logits[i, y]).sum()) for i, y in enumerate([0, 500, 999])]
    assert ranks[0] == 0 and ranks[1] == 1 and ranks[2] > 1
    rows = accuracy_rows(
        "ravlt_t",
        data=root,
        checkpoint=ckpt,
        ema=True,
        image_size=64,
        batch_size=2,
        device="cpu",
        dtype="fp32",
        num_workers=0,
    )
    assert rows[0].value == pytest.approx(100 * 1 / 3)  # the decoy (non-EMA) weights would give 0
    assert rows[1].value == pytest.approx(100 * sum(r < 5 for r in ranks) / 3)
    assert "ema=true" in rows[0].note and "images=3" in rows[0].note and "crop64" in rows[0].note
