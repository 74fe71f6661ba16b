"""load_checkpoint: the formats users have, strictness, one-line errors, and no unsafe unpickling."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

from attnbench.errors import CheckpointError
from attnbench.models import RAVLT, load_checkpoint
from attnbench.models.checkpoint import check_state_dict
from attnbench.models.counting import meta_model

TINY = dict(
    embed_dims=(16, 32, 32, 32),
    depths=(1, 1, 1, 1),
    num_heads=(1, 2, 2, 2),
    num_classes=5,
    projection=64,
    layerscales=(True,) * 4,
    layer_init_values=(1.0,) * 4,
)


def tiny(seed: int) -> RAVLT:
    torch.manual_seed(seed)
    return RAVLT(**TINY)


def same_weights(model: torch.nn.Module, sd: dict) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def deit_checkpoint(with_ema: bool = True) -> tuple[dict, dict, dict]:
    """A training checkpoint shaped like the authors' (DeiT-style) main.py saves."""
    sd, ema = tiny(1).state_dict(), tiny(2).state_dict()
    model = tiny(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    ckpt = {
        "model": sd,
        "optimizer": opt.state_dict(),
        "lr_scheduler": {"t_initial": 300, "lr_min": 1e-5, "base_values": [1e-3], "noise_range_t": None},
        "epoch": 299,
        "scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 17,
        },
        "args": argparse.Namespace(
            model="RAVLT_T",
            batch_size=128,
            lr=1e-3,
            drop_path=0.1,
            input_size=224,
            model_ema=True,
            data_path="/data/imagenet",
            resume="",
            dist_eval=True,
        ),
    }
    if with_ema:
        ckpt["model_ema"] = ema
    return ckpt, sd, ema


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 1200
    return message


def refusal(path: Path, ckpt: object, model: torch.nn.Module | None = None, **options) -> str:
    """Save `ckpt` at `path`, load it into `model` (default tiny(9)) with `options`: the load must raise
    CheckpointError; its one-line message."""
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tiny(9) if model is None else model, path, **options)
    return one_line(exc)


def test_training_checkpoint_with_namespace_args(tmp_path):
    ckpt, sd, _ = deit_checkpoint()
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    model = tiny(9)
    info = load_checkpoint(model, path)
    assert same_weights(model, sd)
    assert (info.key, info.epoch, info.entries, info.stripped_prefix) == ("model", 299, len(sd), False)
    # the allow-list was scoped to the call: nothing was added process-wide
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_ema_selection(tmp_path):
    ckpt, sd, ema = deit_checkpoint()
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    model = tiny(9)
    assert load_checkpoint(model, path, ema=True).key == "model_ema"
    assert same_weights(model, ema) and not same_weights(model, sd)


def test_ema_missing_names_the_keys_present(tmp_path):
    ckpt, _, _ = deit_checkpoint(with_ema=False)
    message = refusal(tmp_path / "no_ema.pth", ckpt, ema=True)
    assert "model_ema" in message and "'model'" in message and "optimizer" in message


@pytest.mark.parametrize("wrap", ["model_ema_only", "bare", "module_prefix"])
def test_other_layouts(tmp_path, wrap):
    sd = tiny(3).state_dict()
    obj = {
        "model_ema_only": {"model_ema": sd},
        "bare": sd,
        "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / f"{wrap}.pth"
    torch.save(obj, path)
    model = tiny(9)
    info = load_checkpoint(model, path)
    assert same_weights(model, sd)
    assert info.stripped_prefix == (wrap == "module_prefix")


def test_wrong_keys_one_readable_error(tmp_path):
    sd = tiny(3).state_dict()
    del sd["layers.1.blocks.0.attn.qkvo.weight"]
    sd["layers.1.blocks.0.attn.qkv.weight"] = torch.zeros(3)
    model = tiny(9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = refusal(tmp_path / "wrong_keys.pth", {"model": sd}, model)
    assert "1 missing keys [layers.1.blocks.0.attn.qkvo.weight]" in message
    assert "1 unexpected keys [layers.1.blocks.0.attn.qkv.weight]" in message
    assert same_weights(model, before)  # nothing was half-loaded


def test_shape_mismatch(tmp_path):
    torch.manual_seed(0)
    other = RAVLT(**{**TINY, "num_classes": 7})
    message = refusal(tmp_path / "seven_classes.pth", {"model": other.state_dict()})
    assert "2 shape mismatches [head.weight: checkpoint (7, 64, 1, 1) vs model (5, 64, 1, 1), head.bias:" in message
    assert "missing" not in message and "unexpected" not in message


def test_long_lists_are_truncated(tmp_path):
    torch.manual_seed(0)
    other = RAVLT(**{**TINY, "embed_dims": (16, 32, 48, 32), "depths": (1, 2, 1, 1)})
    message = refusal(tmp_path / "other.pth", {"model": other.state_dict()})
    assert "unexpected keys [layers.1.blocks.1." in message
    first = "layers.1.downsample.reduction.weight: checkpoint (48, 32, 3, 3) vs model (32, 32, 3, 3)"
    assert f"shape mismatches [{first}" in message
    assert "more]" in message  # many mismatches, listed with a count


def test_error_names_the_variant_the_weights_belong_to():
    """A RAVLT-T state_dict offered to RAVLT-S: the message says it looks like ravlt_t."""
    sd_t = meta_model("ravlt_t").state_dict()
    with pytest.raises(CheckpointError, match=r"look like ravlt_t with num_classes=1000"):
        check_state_dict(meta_model("ravlt_s"), sd_t)


def test_truncated_and_garbage_files(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model": tiny(3).state_dict()}, path)
    data = path.read_bytes()
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(data[: len(data) // 2])
    blobs = []
    for seed in range(20):  # random bytes hit many unpickler paths (IndexError, KeyError, EOFError, ...)
        blob = tmp_path / f"garbage{seed}.pth"
        blob.write_bytes(
            bytes(
                torch.randint(
                    0, 256, (4096,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
                ).tolist()
            )
        )
        blobs.append(blob)
    for bad in (cut, *blobs):
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(tiny(9), bad)
        assert "cannot be read" in one_line(exc)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tiny(9), tmp_path / "missing.pth")


class Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_save", "pickle_protocol_2", "pickle_protocol_5"])
def test_malicious_pickle_is_refused_not_run(tmp_path, writer):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"model": tiny(3).state_dict(), "args": Payload(sentinel)}
    if writer == "torch_save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=int(writer[-1]))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tiny(9), path)
    message = one_line(exc)
    assert "refused" in message and "nothing was run" in message
    if writer == "torch_save":  # raw pickles are refused earlier (an opcode, or the tensors' own globals)
        assert "posix.system" in message or "os.system" in message
    assert not sentinel.exists()
