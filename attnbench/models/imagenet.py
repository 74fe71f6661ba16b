"""ImageNet-1k top-1 / top-5 evaluation of any classifier `nn.Module` (logits (B, C)), single process or torchrun.

Protocol (spec/rala.md section 4): resize the shorter side to 256 with bicubic resampling, center
crop 224, ImageNet mean/std; other resolutions use resize = int(crop / 0.875). Data layouts and the
transform's exact semantics are documented in `attnbench.models.imagenet_data`.

Library entry points: `evaluate`, `evaluate_distributed` (under torchrun: disjoint shards, counts
all-reduced, exact), `accuracy_rows` (what the runner calls for `metrics: [accuracy]`) and
`sha256_file`. Command line, single process or under torchrun::

    python -m attnbench.models.imagenet --model ravlt_t --checkpoint PATH --data DIR [--ema] [--batch-size N]
    torchrun --nproc_per_node 8 -m attnbench.models.imagenet --model ravlt_t --checkpoint PATH --data DIR

prints the result as one JSON line (on rank 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from attnbench.dtypes import TORCH_DTYPES
from attnbench.errors import AttnbenchError, CheckpointError
from attnbench.models.imagenet_data import DataError, EvalTransform, default_resize_size, load_eval_dataset
from attnbench.workload import StaticRow

__all__ = [
    "DataError",
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

DataArg = Union[str, os.PathLike, Dataset]  # a folder / labels file, or a prepared dataset of (Tensor (3, s, s), int)
Progress = Callable[[int, int], None]  # progress(done, total), called after every batch
TOPK = 5


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent; top-k with k = min(5, num_classes)
    images: int
    seconds: float  # wall time of the evaluation loop, data loading and worker start-up included
    images_per_s: float
    num_classes: int  # logits per image


@dataclass(frozen=True)
class _Tally:
    correct1: int
    correct5: int
    images: int
    seconds: float
    num_classes: int  # 0 where this process saw no batch

    def result(self) -> EvalResult:
        n = self.images
        return EvalResult(
            top1=100.0 * self.correct1 / n if n else 0.0,
            top5=100.0 * self.correct5 / n if n else 0.0,
            images=n,
            seconds=self.seconds,
            images_per_s=n / self.seconds if self.seconds > 0 else 0.0,
            num_classes=self.num_classes,
        )


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def subset_indices(n: int, limit: int | None = None) -> list[int]:
    """All of range(n), or `limit` evenly spaced indices i * n // limit (so every class folder is sampled)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    return [i * n // limit for i in range(limit)]


def shard_indices(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank r's disjoint shard: indices[r], indices[r + world], ... (no padding, no duplicates)."""
    return list(indices[rank::world_size])


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in TORCH_DTYPES:
        return TORCH_DTYPES[dtype]
    value = getattr(torch, str(dtype), None)
    if isinstance(value, torch.dtype):
        return value
    raise AttnbenchError(f"unknown dtype {dtype!r}; use one of {', '.join(TORCH_DTYPES)}")


def _as_dataset(data: DataArg, image_size: int, resize_size: int | None) -> Dataset:
    if isinstance(data, (str, os.PathLike)):
        return load_eval_dataset(data, image_size=image_size, resize_size=resize_size)
    if isinstance(data, Dataset):
        return data  # prepared: its own transform applies; image_size/resize_size are ignored
    raise TypeError(f"data must be a folder path or a torch Dataset, got {type(data).__name__}")


def _check_classes(dataset: Dataset, num_classes: int) -> None:
    """Compare the data's classes / labels with the model's logit count (the first batch tells it)."""
    data_classes = getattr(dataset, "num_classes", None)
    if data_classes is not None and data_classes != num_classes:
        raise DataError(
            f"the data has {data_classes} class folders but the model outputs {num_classes} logits; "
            "use the validation set the model was trained for or a model with matching num_classes"
        )
    max_label = getattr(dataset, "max_label", None)
    if max_label is not None and max_label >= num_classes:
        raise DataError(
            f"label {max_label} is out of range for a model with {num_classes} classes; "
            "labels are 0-based indices below the model's num_classes"
        )


def _one_line(e: DataError) -> str:
    """A DataError re-raised from a DataLoader worker carries the worker traceback: keep the message."""
    last = str(e).strip().splitlines()[-1]
    prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def _run(
    model: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: Progress | None,
) -> _Tally:
    """Evaluate `dataset[indices]` in order; counts stay on the device until the end (no per-batch sync)."""
    model.to(device=device, dtype=dtype).eval()
    loader = DataLoader(
        Subset(dataset, list(indices)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    total = len(indices)
    correct1 = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    done = 0
    num_classes = 0
    data_error = None
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for images, labels in loader:  # (B, 3, s, s), (B,)
                logits = model(images.to(device=device, dtype=dtype, non_blocking=True))  # (B, C)
                if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
                    raise ValueError(f"the model must return logits (B, C), got shape {tuple(logits.shape)}")
                if not num_classes:
                    num_classes = logits.shape[1]
                    _check_classes(dataset, num_classes)
                if int(labels.max()) >= num_classes:  # prepared datasets have no max_label
                    raise DataError(f"label {int(labels.max())} is out of range for {num_classes} classes")
                k = min(TOPK, num_classes)
                top = logits.float().topk(k, dim=1).indices  # (B, k), best first
                hits = top.eq(labels.to(device)[:, None])  # (B, k)
                correct1 += hits[:, 0].sum()
                correct5 += hits.any(dim=1).sum()
                done += labels.shape[0]
                if progress is not None:
                    progress(done, total)
    except DataError as e:
        data_error = _one_line(e)
        # A worker's error is re-raised through frames that hold the loader iterator in a reference cycle; drop
        # them so the worker processes shut down now, not at some later garbage collection (a 5 s join each).
        e.__traceback__ = None
    if data_error is not None:
        raise DataError(data_error)  # outside the handler: no chained context keeps those frames alive
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return _Tally(int(correct1), int(correct5), done, seconds, num_classes)


def evaluate(
    model: nn.Module,
    data: DataArg,
    *,
    batch_size: int = 64,
    image_size: int = 224,
    resize_size: int | None = None,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    limit: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Top-1 / top-5 accuracy (%) and images/s of `model` on an ImageNet-style validation folder.

    `data`: a folder or labels file (see `attnbench.models.imagenet_data`) or a prepared Dataset of
    (Tensor (3, s, s), int) items (then `image_size`/`resize_size` are ignored). The model is moved to
    `device`/`dtype` and put in eval mode. `limit` evaluates that many evenly spaced images (a quick
    check that still covers every class). `progress(done, total)` is called after every batch.
    """
    dataset = _as_dataset(data, image_size, resize_size)
    if len(dataset) == 0:
        raise DataError("the evaluation dataset is empty; point data/--data at a folder with images")
    tally = _run(
        model,
        dataset,
        subset_indices(len(dataset), limit),
        batch_size=batch_size,
        num_workers=num_workers,
        device=torch.device(device),
        dtype=_torch_dtype(dtype),
        progress=progress,
    )
    return tally.result()


def _rank_device(device: str | torch.device) -> torch.device:
    """A bare "cuda" becomes this process's GPU, cuda:LOCAL_RANK (torchrun sets LOCAL_RANK)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def evaluate_distributed(
    model: nn.Module,
    data: DataArg,
    *,
    batch_size: int = 64,
    image_size: int = 224,
    resize_size: int | None = None,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    limit: int | None = None,
    progress: Progress | None = None,
    backend: str | None = None,
) -> EvalResult:
    """`evaluate` across the ranks of a torch.distributed job (e.g. launched by torchrun); same result on every rank.

    Uses the current process group, or initialises one from torchrun's environment (backend nccl on
    GPU, gloo on CPU, unless `backend` says otherwise) and destroys it at the end. Rank r evaluates
    the disjoint shard indices[r::world] (no padding, no duplicated samples); correct counts and
    image totals are all-reduced, so top1/top5 are exactly the single-process values. `seconds` is
    the slowest rank's loop time (ranks start together after a barrier). `progress` reports this
    rank's shard. A bare device "cuda" means cuda:LOCAL_RANK.
    """
    import torch.distributed as dist

    dev = _rank_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    own_group = not dist.is_initialized()
    if own_group:
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise AttnbenchError(
                f"evaluate_distributed needs a process group or torchrun's environment ({', '.join(missing)} unset); "
                "launch with torchrun --nproc_per_node N"
            )
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"))
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        dataset = _as_dataset(data, image_size, resize_size)
        if len(dataset) == 0:
            raise DataError("the evaluation dataset is empty; point data/--data at a folder with images")
        shard = shard_indices(subset_indices(len(dataset), limit), rank, world)
        dist.barrier()
        tally = _run(
            model,
            dataset,
            shard,
            batch_size=batch_size,
            num_workers=num_workers,
            device=dev,
            dtype=_torch_dtype(dtype),
            progress=progress,
        )
        comm_device = dev if dist.get_backend() == "nccl" else torch.device("cpu")
        counts = torch.tensor([tally.correct1, tally.correct5, tally.images], dtype=torch.int64, device=comm_device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        slowest = torch.tensor([tally.seconds, float(tally.num_classes)], dtype=torch.float64, device=comm_device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        c1, c5, n = (int(v) for v in counts.tolist())
        seconds, num_classes = slowest.tolist()
        return _Tally(c1, c5, n, seconds, int(num_classes)).result()
    finally:
        if own_group:
            dist.destroy_process_group()


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
) -> list[StaticRow]:
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
        StaticRow("top1", result.top1, "%", note=note),
        StaticRow("top5", result.top5, "%", note=note),
        StaticRow("throughput", result.images_per_s, "items/s", note="eval incl. data loading"),
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
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader worker processes per rank (0: load in the main process)")  # fmt: skip
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
