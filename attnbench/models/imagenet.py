"""ImageNet-1k top-1 / top-5 evaluation of any classifier `nn.Module` (logits (B, C)), single process or torchrun.

Protocol (docs/rala.md, "RAVLT"): resize the shorter side to 256 with bicubic resampling, center
crop 224, ImageNet mean/std; other resolutions use resize = int(crop / 0.875). Data layouts and the
transform's exact semantics are documented in `attnbench.models.imagenet_data`.

Library entry points: `evaluate`, `evaluate_distributed` (under torchrun: disjoint shards, counts
all-reduced, exact; both in `imagenet_eval`, both taking the fields of `EvalOptions` as keywords),
`accuracy_rows` (what the runner calls for `metrics: [accuracy]`) and `sha256_file`. Command line,
single process or under torchrun::

    python -m attnbench.models.imagenet --model ravlt_t --checkpoint PATH --data DIR [--ema] [--batch-size N]
    torchrun --nproc_per_node 8 -m attnbench.models.imagenet --model ravlt_t --checkpoint PATH --data DIR

prints the result as one JSON line (on rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from attnbench.dtypes import TORCH_DTYPES
from attnbench.errors import AttnbenchError, CheckpointError
from attnbench.metrics.row import MetricRow
from attnbench.models.imagenet_data import DataError, EvalTransform, default_resize_size, load_eval_dataset
from attnbench.models.imagenet_eval import (
    EvalOptions,
    EvalResult,
    Progress,
    evaluate,
    evaluate_distributed,
    sha256_file,
    shard_indices,
    subset_indices,
)

__all__ = [
    "DataError",
    "EvalOptions",
    "EvalResult",
    "accuracy_rows",
    "evaluate",
    "evaluate_distributed",
    "load_pretrained",
    "main",
    "sha256_file",
    "shard_indices",
    "subset_indices",
]


def load_pretrained(model_name: str, checkpoint: str | os.PathLike, *, ema: bool = False) -> nn.Module:
    """create_ravlt(model_name) with the checkpoint's weights (`model_ema` when ema), in eval mode."""
    from attnbench.models.checkpoint import load_checkpoint
    from attnbench.models.ravlt import create_ravlt

    model = create_ravlt(model_name)
    load_checkpoint(model, checkpoint, ema=ema)
    return model.eval()


def _require_paths(model_name: str, data: Any, checkpoint: Any) -> tuple[Path, Path]:
    if data is None or str(data) == "":
        raise DataError(
            f"no ImageNet validation data for {model_name}: set `data:` in the suite (or --set data=PATH) "
            "to a val/<class_dir>/<image> folder"
        )
    if not Path(data).expanduser().exists():
        raise DataError(f"ImageNet validation data not found: {data}; set `data:` to an existing val folder")
    if checkpoint is None or str(checkpoint) == "":
        raise CheckpointError(
            f"no checkpoint for {model_name}: set `checkpoints: {{{model_name}: {{path: FILE}}}}` in the suite"
        )
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint for {model_name} not found: {checkpoint}; fix its path under `checkpoints:`")
    return Path(data).expanduser(), ckpt


def accuracy_rows(
    model_name: str,
    *,
    data: str | os.PathLike | None,
    checkpoint: str | os.PathLike | None,
    ema: bool,
    image_size: int,
    batch_size: int,
    device: str | torch.device,
    dtype: torch.dtype | str,
    num_workers: int,
    limit: int | None = None,
    progress: Progress | None = None,
) -> list[MetricRow]:
    """Measured top1 / top5 (%) and evaluation throughput of a pretrained model, as runner rows.

    Raises a one-line AttnbenchError (DataError / CheckpointError) when the data or the checkpoint is
    missing or unusable; the runner records that as a skipped row and still writes the reported rows.
    """
    data_path, ckpt = _require_paths(model_name, data, checkpoint)
    dataset = load_eval_dataset(data_path, image_size=image_size)  # scan first: data errors before any heavy work
    digest = sha256_file(ckpt)
    model = load_pretrained(model_name, ckpt, ema=ema)
    result = evaluate(
        model,
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        dtype=dtype,
        limit=limit,
        progress=progress,
    )
    protocol = EvalTransform(image_size=image_size).protocol
    note = f"sha256={digest[:16]}..., images={result.images}, ema={str(bool(ema)).lower()}, protocol={protocol}"
    return [
        MetricRow("top1", result.top1, "%", note=note),
        MetricRow("top5", result.top5, "%", note=note),
        MetricRow("throughput", result.images_per_s, "items/s", note="eval incl. data loading"),
    ]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m attnbench.models.imagenet",
        description="ImageNet top-1/top-5 of a RAVLT checkpoint; works under torchrun (one JSON line on rank 0).",
    )
    p.add_argument("--model", required=True, help="ravlt_t | ravlt_s | ravlt_b | ravlt_l")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (weights under model / model_ema, or bare)")
    p.add_argument("--data", required=True, help="val folder (val/<class_dir>/<image>) or a labels file")
    p.add_argument("--ema", action="store_true", help="load the EMA weights (model_ema)")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--image-size", type=int, default=224, help="center crop size")
    p.add_argument("--resize-size", type=int, default=None, help="shorter-side resize (default int(crop / 0.875))")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader worker processes per rank (0: load in the main process)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--dtype", default="fp32", choices=sorted(TORCH_DTYPES))
    p.add_argument("--limit", type=int, default=None, help="evaluate this many evenly spaced images")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        _require_paths(args.model, args.data, args.checkpoint)
        from attnbench.loading import load_mechanisms

        load_mechanisms()  # this entry point's one load: the RAVLT mixers come from the mechanism registry
        model = load_pretrained(args.model, args.checkpoint, ema=args.ema)
        evaluate_fn = evaluate_distributed if world > 1 else evaluate
        result = evaluate_fn(
            model,
            args.data,
            batch_size=args.batch_size,
            image_size=args.image_size,
            resize_size=args.resize_size,
            num_workers=args.workers,
            device=device,
            dtype=args.dtype,
            limit=args.limit,
        )
        if rank == 0:
            resize = args.resize_size or default_resize_size(args.image_size)
            record = {
                "model": args.model,
                "checkpoint": str(args.checkpoint),
                "sha256": sha256_file(args.checkpoint),
                "ema": args.ema,
                "data": str(args.data),
                "protocol": EvalTransform(image_size=args.image_size, resize_size=resize).protocol,
                "device": device,
                "dtype": args.dtype,
                "world_size": world,
                **asdict(result),
            }
            print(json.dumps(record), flush=True)
    except AttnbenchError as e:
        print(f"error: {e}" if world == 1 else f"error (rank {rank}): {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
