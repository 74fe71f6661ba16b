"""Safe checkpoint loading for RAVLT (and any nn.Module with a published key layout).

Always `torch.load(path, map_location="cpu", weights_only=True)`: tensors, containers and
primitives only. The authors' DeiT-style training checkpoints also pickle `args`, an
argparse.Namespace, so exactly that class is allow-listed, inside a `safe_globals` context (scoped
to this call, not process-wide). Anything else a pickle names (e.g. `os.system` in a malicious
`__reduce__`) is refused before it runs. Every failure is one `CheckpointError` line.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from attnbench.errors import CheckpointError

SAFE_GLOBALS = (argparse.Namespace,)  # everything a published training checkpoint needs beyond tensors
WEIGHT_KEYS = ("model", "model_ema", "state_dict")  # where checkpoints keep weights, in order of preference
PREFIX = "module."  # DistributedDataParallel's wrapper prefix
SHOW = 5  # keys shown per list in an error message


@dataclass(frozen=True)
class CheckpointInfo:
    """What `load_checkpoint` loaded: the file, the entry the weights came from, the epoch if saved."""

    path: str
    key: str  # "model" | "model_ema" | "state_dict" | "" (a bare state_dict)
    epoch: int | None
    entries: int  # state_dict entries loaded
    stripped_prefix: bool


def read_checkpoint(path: str | Path) -> Any:
    """torch.load with weights_only=True and argparse.Namespace allow-listed for this call only."""
    if not str(path).strip():
        raise CheckpointError(
            "checkpoint path is empty; give the path of a .pth file (random weights are never substituted)"
        )
    path = Path(path)
    try:
        found = path.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        raise CheckpointError(f"checkpoint {str(path)[:200]!r} not found; check the path")
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; older torch: tensors only
    try:
        with scoped(list(SAFE_GLOBALS)) if scoped is not None else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_unpickling_message(path, exc)) from None
    except Exception as exc:  # corrupt bytes can fail anywhere in the (weights-only, non-executing) unpickler
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read (truncated or corrupt file?): {first[:200]}"
        ) from None


def _unpickling_message(path: Path, exc: Exception) -> str:
    """One line saying why the weights-only unpickler refused the file (nothing in it was executed)."""
    text = str(exc)
    where = f"checkpoint {str(path)!r} refused by the weights-only unpickler"
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"{where}: it references {found.group(1)}, which is not on the allow-list (tensors, containers, "
            "argparse.Namespace) and could execute code; nothing was run. If you trust the file, re-save only "
            "its state_dict and load that"
        )
    opcode = re.search(r"Unsupported operand (\d+)", text)
    if opcode:
        return (
            f"checkpoint {str(path)!r} refused: it cannot be read as a torch checkpoint (pickle opcode "
            f"{opcode.group(1)}, which torch.save never writes: corrupt, another format, or crafted); nothing was run"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = next((ln for ln in lines[1:] if not ln.startswith(("Check the documentation", "Please file"))), "")
    return f"{where} (corrupt or not a torch checkpoint?){': ' + detail if detail else ''}; nothing was run"


def _shortlist(items: list[str], limit: int = SHOW) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... +{len(items) - limit} more' if len(items) > limit else ''}]"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def select_state_dict(obj: Any, *, ema: bool = False, path: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, key it came from) out of a loaded checkpoint object; see `load_checkpoint`."""
    where = f"checkpoint {path!r}" if path else "checkpoint"
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a dict of weights")
    keys = [repr(k) for k in obj.keys()]
    if ema:
        if "model_ema" not in obj:
            raise CheckpointError(
                f"{where} has no 'model_ema' entry (ema=True); its top-level keys are {_shortlist(keys, 10)}"
            )
        key = "model_ema"
    elif _is_state_dict(obj):
        return dict(obj), ""
    else:
        key = next((k for k in WEIGHT_KEYS if k in obj), None)
        if key is None:
            raise CheckpointError(
                f"{where} has no weights: expected a state_dict or one of the keys {list(WEIGHT_KEYS)}, "
                f"found {_shortlist(keys, 10)}"
            )
    sd = obj[key]
    if not _is_state_dict(sd):
        raise CheckpointError(f"{where}: entry {key!r} is not a state_dict (a {type(sd).__name__})")
    return dict(sd), key


def _guess_variant(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the published variant whose key/shape layout `sd` matches (any class count), or ''."""
    from attnbench.models.ravlt import RAVLT, RAVLT_CONFIGS

    head = sd.get("head.weight")
    classes = int(head.shape[0]) if head is not None else 0
    for name, cfg in RAVLT_CONFIGS.items():
        if sd.get("patch_embed.proj.9.weight", torch.empty(0)).shape[:1] != (cfg.embed_dims[0],):
            continue
        with torch.device("meta"):
            ref = RAVLT.from_config(cfg).state_dict()
        ref = {k: v for k, v in ref.items() if not k.startswith("head.")}
        ours = {k: v for k, v in sd.items() if not k.startswith("head.")}
        if ours.keys() == ref.keys() and all(ours[k].shape == ref[k].shape for k in ref):
            return f"{name} with num_classes={classes}"
    return ""


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, where: str = "checkpoint") -> None:
    """Raise one CheckpointError listing missing keys, unexpected keys and shape mismatches, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys {_shortlist(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {_shortlist(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches {_shortlist(mismatched)}")
    hint = "build the model variant (and num_classes) the checkpoint was trained with"
    try:
        guess = _guess_variant(sd)
    except Exception:  # a hint must never hide the real error
        guess = ""
    if guess:
        hint = f"the weights look like {guess}; create that model"
    raise CheckpointError(f"{where} does not match {type(model).__name__}: {'; '.join(parts)}; {hint}")


def check_values(model: nn.Module, sd: Mapping[str, torch.Tensor], *, where: str = "checkpoint") -> None:
    """Refuse weights that would measure something else than the model: a floating-point entry stored with
    an integer (or bool) dtype, and non-finite values (NaN/inf) in any floating-point entry."""
    expected = model.state_dict()
    wrong = [
        f"{k}: {str(v.dtype).replace('torch.', '')} (model {str(expected[k].dtype).replace('torch.', '')})"
        for k, v in sd.items()
        if k in expected and expected[k].is_floating_point() and not v.is_floating_point()
    ]
    if wrong:
        raise CheckpointError(
            f"{where} stores {len(wrong)} floating-point weights with an integer dtype "
            f"{_shortlist(wrong)}; re-save the float weights"
        )
    bad = [k for k, v in sd.items() if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{where} has non-finite values (NaN/inf) in {len(bad)} entries {_shortlist(bad)}; "
            "the weights are damaged: use another checkpoint"
        )


def load_checkpoint(model: nn.Module, path: str | Path, ema: bool = False) -> CheckpointInfo:
    """Load weights into `model` strictly and safely; return what was loaded.

    Accepts `{"model": sd}`, `{"model_ema": sd}`, `{"state_dict": sd}`, a bare state_dict, and full
    training checkpoints (`model`, `model_ema`, `optimizer`, `lr_scheduler`, `scaler`, `epoch`,
    `args` = argparse.Namespace). `model` is preferred over `model_ema` unless `ema=True`, which
    requires `model_ema`. A `module.` prefix (DDP) is stripped. Any problem raises CheckpointError.
    """
    obj = read_checkpoint(path)
    sd, key = select_state_dict(obj, ema=ema, path=str(path))
    stripped = any(k.startswith(PREFIX) for k in sd)
    if stripped:
        sd = {k[len(PREFIX) :] if k.startswith(PREFIX) else k: v for k, v in sd.items()}
    where = f"checkpoint {str(path)!r}" + (f" ({key!r})" if key else "")
    check_state_dict(model, sd, where=where)
    check_values(model, sd, where=where)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied; keep it to one line
        raise CheckpointError(f"{where}: load_state_dict failed: {str(exc).splitlines()[0]}") from None
    epoch = obj.get("epoch") if isinstance(obj, Mapping) and key else None
    return CheckpointInfo(
        path=str(path),
        key=key,
        epoch=int(epoch) if isinstance(epoch, (int, float)) else None,
        entries=len(sd),
        stripped_prefix=stripped,
    )
