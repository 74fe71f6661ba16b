"""ImageNet-1k top-1 / top-5 of any classifier `nn.Module` (logits (B, C)): the evaluation loops, in one
process (`evaluate`) or under torchrun (`evaluate_distributed`: disjoint shards, counts all-reduced, exact).

The protocol and data layouts are in `attnbench.models.imagenet_data`; loading a RAVLT checkpoint, the
runner's rows and the command line are in `attnbench.models.imagenet`.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from attnbench.dtypes import TORCH_DTYPES
from attnbench.errors import AttnbenchError
from attnbench.models.imagenet_data import DataError, load_eval_dataset

DataArg = Union[str, os.PathLike, Dataset]  # a folder / labels file, or a prepared dataset of (Tensor (3, s, s), int)
Progress = Callable[[int, int], None]  # progress(done, total), called after every batch
TOPK = 5


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation runs: the keyword arguments of `evaluate` and `evaluate_distributed`.

    `image_size` / `resize_size`: the protocol's center crop and shorter-side resize (default
    int(image_size / 0.875)), for a folder or labels file; a prepared Dataset ignores them. The model is
    moved to `device` / `dtype` (a torch.dtype or a name such as "fp16"). `limit` evaluates that many evenly
    spaced images (a quick check that still covers every class). `progress(done, total)` is called after
    every batch. `batch_size` and `num_workers` (DataLoader worker processes; 0 loads in the caller) are
    per process.
    """

    batch_size: int = 64
    image_size: int = 224
    resize_size: int | None = None
    num_workers: int = 2
    device: str | torch.device = "cpu"
    dtype: torch.dtype | str = torch.float32
    limit: int | None = None
    progress: Progress | None = None


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
    """The (non-empty) evaluation dataset: a folder or labels file loaded with the protocol's transform, or a
    prepared Dataset as it is (its own transform applies; image_size/resize_size are ignored)."""
    if isinstance(data, (str, os.PathLike)):
        dataset = load_eval_dataset(data, image_size=image_size, resize_size=resize_size)
    elif isinstance(data, Dataset):
        dataset = data
    else:
        raise TypeError(f"data must be a folder path or a torch Dataset, got {type(data).__name__}")
    if len(dataset) == 0:
        raise DataError("the evaluation dataset is empty; point data/--data at a folder with images")
    return dataset


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
    model: nn.Module, dataset: Dataset, indices: Sequence[int], options: EvalOptions, device: torch.device
) -> _Tally:
    """Evaluate `dataset[indices]` on `device` in order; counts stay on the device until the end (no per-batch sync)."""
    dtype, progress = _torch_dtype(options.dtype), options.progress
    model.to(device=device, dtype=dtype).eval()
    loader = DataLoader(
        Subset(dataset, list(indices)),
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=options.num_workers,
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


def evaluate(model: nn.Module, data: DataArg, **options: Any) -> EvalResult:
    """Top-1 / top-5 accuracy (%) and images/s of `model` on an ImageNet-style validation folder.

    `data`: a folder or labels file (see `attnbench.models.imagenet_data`) or a prepared Dataset of
    (Tensor (3, s, s), int) items. `options`: the fields of `EvalOptions` (batch_size=64, image_size=224,
    resize_size, num_workers=2, device="cpu", dtype=torch.float32, limit, progress). The model is put in
    eval mode.
    """
    opts = EvalOptions(**options)
    dataset = _as_dataset(data, opts.image_size, opts.resize_size)
    return _run(model, dataset, subset_indices(len(dataset), opts.limit), opts, torch.device(opts.device)).result()


def _rank_device(device: str | torch.device) -> torch.device:
    """A bare "cuda" becomes this process's GPU, cuda:LOCAL_RANK (torchrun sets LOCAL_RANK)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def evaluate_distributed(model: nn.Module, data: DataArg, *, backend: str | None = None, **options: Any) -> EvalResult:
    """`evaluate` across the ranks of a torch.distributed job (e.g. launched by torchrun); same result on every rank.

    `options`: as for `evaluate` (the fields of `EvalOptions`). Uses the current process group, or
    initialises one from torchrun's environment (backend nccl on GPU, gloo on CPU, unless `backend` says
    otherwise) and destroys it at the end. Rank r evaluates the disjoint shard indices[r::world] (no
    padding, no duplicated samples); correct counts and image totals are all-reduced, so top1/top5 are
    exactly the single-process values. `seconds` is the slowest rank's loop time (ranks start together
    after a barrier). `progress` reports this rank's shard. A bare device "cuda" means cuda:LOCAL_RANK.
    """
    import torch.distributed as dist

    opts = EvalOptions(**options)
    dev = _rank_device(opts.device)
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
        dataset = _as_dataset(data, opts.image_size, opts.resize_size)
        shard = shard_indices(subset_indices(len(dataset), opts.limit), rank, world)
        dist.barrier()
        tally = _run(model, dataset, shard, opts, dev)
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
